"""Files written whole or not at all: a reader (or an interrupted run) never sees half of one."""
import hashlib
import io
import json
import os
import tempfile

import torch


def atomic_write(path, data: bytes):
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary shared data files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    """Atomically replace `path` with obj as JSON, so an interrupted run leaves a valid file."""
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def save_torch(path, obj):
    """Atomically replace `path` with torch.save(obj)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def sha256_file(path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
