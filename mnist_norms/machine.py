"""The machine: the device, the allocator setting, and the CPU instruction set of PyTorch's kernels, pinned so that a
run reproduces bit for bit on other CPUs.

ATen's vectorized kernels and oneDNN's convolutions pick their code by the CPU's instruction set, so the same seed
gives other last digits on an AVX-512 CPU than on an AVX2 one. Both can be capped before torch runs its first
operation (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA); capped at AVX2, which nearly every x86-64 CPU of the last ten
years has, a run reproduces on all of them. pin_isa() sets the cap and checks that it took effect; isa_in_use()
says what a process computes with, for a run's config.
"""
import contextlib
import ctypes
import multiprocessing
import os
import platform
import re
import sys
import tempfile
import threading
import warnings

import torch

AVX2 = "avx2"  # the instruction set pinned by default, and how a run's config names it when both use it


def _cpuinfo(key):
    """The value of `key` in Linux's /proc/cpuinfo (its first CPU), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The CPU's feature flags (Linux's /proc/cpuinfo), or None where they cannot be read."""
    flags = _cpuinfo("flags")
    return set(flags.split()) if flags is not None else None


def cpu_vendor():
    """The CPU's vendor as /proc/cpuinfo gives it ("AuthenticAMD", "GenuineIntel"), or None where it cannot be read.
    Pinned to AVX2, an Intel-made run has re-run bit for bit on AMD EPYCs (docs/performance.md); the vendor is
    recorded so that a run that does not re-run can be traced."""
    return _cpuinfo("vendor_id")


def cpu_name():
    """The CPU's model and vendor as /proc/cpuinfo gives them ("AMD EPYC (AuthenticAMD)"), for a run's config (pinned
    to AVX2, runs have re-run bit for bit across Intel and AMD: docs/performance.md). None where /proc/cpuinfo cannot
    be read."""
    vendor, model = cpu_vendor(), _cpuinfo("model name")
    if vendor is None and model is None:
        return None
    return f"{model or 'unknown model'} ({vendor or 'unknown vendor'})"


def why_not_pinnable():
    """Why AVX2 cannot be pinned on this CPU (a sentence), or None where it can: an x86-64 CPU with AVX2 and FMA."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the CPU is {platform.machine()}, not x86-64"
    flags = cpu_flags()
    if flags is None:
        return "this system does not show the CPU's flags (/proc/cpuinfo)"
    if not {"avx2", "fma"} <= flags:
        return "the CPU has no AVX2 (or no FMA)"
    return None


@contextlib.contextmanager
def _stdout_to(file):
    """Send the process's C-level standard output (where oneDNN's verbose lines go) to `file` for the block."""
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    try:
        os.dup2(file.fileno(), 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def onednn_convolution():
    """oneDNN's implementation of a convolution of this network's shapes, as its verbose log names it ("jit:avx2",
    "brgconv:avx512_core"), or "unknown" where it cannot be read. It runs one convolution (of zeros: no random
    number is drawn)."""
    x, w = torch.zeros(2, 10, 26, 26), torch.zeros(20, 10, 3, 3)  # conv1's shapes; too small a one skips oneDNN
    try:
        with tempfile.TemporaryFile() as log:
            with _stdout_to(log), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.nn.functional.conv2d(x, w)
            log.seek(0)
            found = re.search(r"exec,cpu,convolution,([^,]+),", log.read().decode(errors="replace"))
    except (OSError, AttributeError):  # no C library to flush, or no verbose mode in this build
        return "unknown"
    return found.group(1) if found else "unknown"


def isa_in_use():
    """What this process computes with on the CPU, for a run's config: "avx2" where ATen's kernels and oneDNN's
    convolutions both use AVX2 (reproducible on x86-64 CPUs with AVX2 and FMA, Intel's and AMD's alike), else
    "native: ATen X, oneDNN Y"
    (reproducible only on the same kind of CPU). Asking runs torch's first operations if none ran yet: pin first."""
    return _describe(torch.backends.cpu.get_cpu_capability().lower(), onednn_convolution())


def parts(isa):
    """(ATen's capability, oneDNN's convolution or None) of an isa_in_use() string: "avx2" -> ("avx2", "jit:avx2");
    "native: ATen avx512, oneDNN brgconv:avx512_core" -> ("avx512", "brgconv:avx512_core")."""
    if isa == AVX2:
        return AVX2, "jit:" + AVX2
    found = re.fullmatch(r"native: ATen ([^,]+)(?:, oneDNN (.+))?", isa)
    if not found:
        raise ValueError(f"not an instruction set as isa_in_use() writes it: {isa!r}")
    return found.group(1), found.group(2)


def _describe(aten, convolution):
    return AVX2 if aten == AVX2 and convolution.endswith(":" + AVX2) else f"native: ATen {aten}, oneDNN {convolution}"


def pin_isa(pin=True, *, onednn=True):
    """Cap ATen's kernels and (onednn=True) oneDNN's at AVX2, then check that the cap took effect; returns
    isa_in_use(). Call it before torch's first tensor operation (loading data is one).

    pin=False leaves the CPU's native instruction set (faster on some CPUs, reproducible only on the same kind).
    onednn=False caps ATen only: bf16 runs need oneDNN's AVX-512 BF16 kernels where the CPU has them. Where the cap
    cannot be set (not x86-64, no AVX2) or came too late (torch already ran operations in this process), it warns
    and the result says what is in use instead.
    """
    if pin:
        reason = why_not_pinnable()
        if reason:
            warnings.warn(f"the CPU instruction set is not pinned to AVX2: {reason}; runs here reproduce bit for "
                          f"bit only on this kind of CPU", stacklevel=2)
            return isa_in_use()
        os.environ["ATEN_CPU_CAPABILITY"] = AVX2
        if onednn:
            os.environ["ONEDNN_MAX_CPU_ISA"] = AVX2.upper()
    aten, convolution = torch.backends.cpu.get_cpu_capability().lower(), onednn_convolution()
    if pin and (aten != AVX2 or (onednn and not convolution.endswith(":" + AVX2))):
        warnings.warn(f"the CPU instruction set could not be pinned to AVX2: torch had already run an operation in "
                      f"this process, so its kernels were chosen (ATen {aten}, oneDNN {convolution}); pin before "
                      f"anything else, at the start of the program", stacklevel=2)
    return _describe(aten, convolution)


def default_jobs(device, runs=None):
    """Runs trained at once by default. On a GPU one. On a CPU, where every run computes with one thread (so no number
    depends on this): all of them when they are at most twice the cores, else one per core (runs None: many). Three
    runs on 2 cores (`python train.py --epochs 2`, whole process) finished 1.09 times as fast all at once as two and
    then the third alone (docs/performance.md): without a tail in which a core idles."""
    if device.type != "cpu":
        return 1
    cores = os.cpu_count() or 1
    return runs if runs is not None and runs <= 2 * cores else cores


def pick_device(name=None) -> torch.device:
    """cuda, then mps, then cpu; `name` (e.g. "cpu", "cuda:0") overrides and must be available."""
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)  # raises on a malformed name
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available here; use cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be cpu, cuda[:N] or mps, got {name!r}")
    return device


def tune_malloc(threshold=1 << 30) -> bool:
    """On Linux with glibc, raise malloc's mmap and trim thresholds to `threshold` bytes; elsewhere do nothing.

    By default glibc serves each large activation buffer with a fresh mmap and hands it back to the kernel
    when freed, so every training step page-faults its memory in again. Above these thresholds freed
    memory stays in the heap and is reused. The arithmetic is unchanged. Call it once at start-up, before
    the large allocations. Returns whether both settings were applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_trim_threshold, threshold))


def hardware(device):
    """What computes the run: the GPU's name, or the CPU's vector instruction set as PyTorch uses it ("AVX2",
    "AVX512"), which decides its kernels and so the last digits of a run's numbers."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU {torch.backends.cpu.get_cpu_capability()}"


def gpu_arithmetic(precision, device):
    """Before a run on a CUDA GPU: ValueError for bf16 where the GPU only emulates bfloat16 (cuDNN takes bfloat16
    convolutions from compute capability 8.0; below, a T4 say, autocast falls back to much slower kernels than fp32),
    and for fp32 true fp32: TF32 off for convolutions and matrix products (PyTorch lets cuDNN use TF32 by default),
    cuDNN's deterministic algorithms and no benchmarking, so that cuDNN does not pick its algorithms by timing them.
    That is not a promise of the same numbers: GPU runs are not bit-reproducible (docs/performance.md). It asks about
    `device`, the run's GPU, rather than the current one, which torch.cuda.is_bf16_supported asks about: bfloat16 is
    native on every ROCm GPU, and on CUDA ones of compute capability 8.0 or newer."""
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if precision == "bf16" and not torch.version.hip and capability < (8, 0):
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} has no native bfloat16 (compute "
                         f"capability {'.'.join(map(str, capability))}; 8.0 or newer has it), and emulated it is "
                         f"slower than fp32; use fp32")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def die_with_parent():
    """In a process started by multiprocessing: end when the process that started it ends, however it ends (a
    SIGKILL, an out-of-memory kill, a notebook's kernel restarted) rather than stay behind, idle, holding its memory.
    multiprocessing keeps a pipe from the starting process to each process it starts, whether spawned or forked by
    the fork server; when the starting process ends, the pipe closes, and a thread waiting on it ends this one. (Not
    the parent in the process tree: the fork server is that, and it outlives the process that started it while any
    process it forked lives. Linux's PR_SET_PDEATHSIG, tried first, did not end the workers.)"""
    parent = multiprocessing.parent_process()

    def watch():
        parent.join()
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="die_with_parent").start()


def rng_state(device):
    """The global random generators' states that a run on `device` draws from: the CPU's, and the GPU's on one."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state, device):
    """Restore what rng_state saved (CPU byte tensors, as checkpoints hold them: utils reads those to the CPU)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state["mps"])
