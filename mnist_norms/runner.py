"""The machinery beneath utils.py: resumable runs of the student's fit (utils.fit), each with a checkpoint after every
epoch, many at once in worker processes, or finished ones loaded. It takes the function it runs as an argument, as a
process pool takes the function it runs, and imports nothing above it."""
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.managers import SyncManager

import torch
from tqdm.auto import tqdm

from mnist_norms import machine
from mnist_norms.config import RECIPE_KEYS, differences, run_config
from mnist_norms.data import DataError, select
from mnist_norms.files import save_torch, sha256_file, write_json
from mnist_norms.recipe import Recipe, experiment_folder
from mnist_norms.records import (
    ROOT,
    RUNS,
    RecordError,
    how_to_restore,
    is_finished,
    load_torch,
    load_weights,
    read_json,
    read_record,
    run_paths,
    settings_clash,
    shown,
)
from mnist_norms.training import evaluate

# What a user can cause and mend (settings, data, files): commands print these as one line, not as a traceback.
USER_ERRORS = (ValueError, OSError, DataError)


@dataclass(frozen=True)
class Study:
    """What a study adds to its runs; Study() adds nothing (the notebook's and train.py's runs).

    folder: the runs' folder under OUT/results/, weights/ and checkpoints/ (None: the recipes' settings folder,
    recipe.experiment_folder; run() alone: ""). names: the runs' names, one per recipe, if not their recipes'.
    batch_stats: the BN runs are also evaluated with test-batch statistics after every epoch (test_loss_batch_stats,
    test_acc_batch_stats). stop_after: every run stops after that epoch, as an interruption would (its checkpoint
    stays, no weights yet), and counts as done once it has it. invocations: the file under OUT/results/FOLDER/ to
    which each invocation that trains anything appends its wall time, jobs and device."""
    folder: str | None = None
    names: tuple | None = None
    batch_stats: bool = False
    stop_after: int | None = None
    invocations: str = "invocations.json"


def run(fit, recipe, data, *, device, out=RUNS, name=None, study=Study(), progress=True, fresh=False, log=tqdm.write,
        threads=1):
    """fit(recipe, train, test, device, ...) (utils.fit: train from scratch, evaluate after every epoch), with files.

    Files (run_paths): after every epoch the JSON record (config and history so far) and a checkpoint (model,
    optimizer, schedule, average, both random generators, history); at the end the weights (state_dict and config),
    and the checkpoint is removed.

    Resumes: a run whose JSON holds every epoch is finished and only loaded (its model is None if its weights file is
    missing); an unfinished run continues from its checkpoint, and on a CPU with the same thread count ends
    bit-identical to an uninterrupted run. Files written with other settings raise SettingsClash; fresh=True deletes
    them and starts over. name: the run's name if not the recipe's; study: what a study adds (Study). log: prints one
    line (what the run did, each epoch). threads: on a CPU, the run computes with this many threads (restored
    afterwards): a run's last digits depend on its thread count, so every run has one by default.
    Returns (model, record).
    """
    machine.gpu_arithmetic(recipe.precision, device)  # on a GPU: bf16 only where native, fp32 without TF32
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        return _run(fit, recipe, data, device, out, name or recipe.name, study, progress, fresh, log)
    finally:
        torch.set_num_threads(before)


def _run(fit, recipe, data, device, out, name, study, progress, fresh, log):
    """run(), top to bottom: a finished run is loaded; otherwise fit() from its start or its checkpoint, saving the
    record and a checkpoint after each epoch, and at the end keep the weights."""
    paths = run_paths(out, study.folder or "", name, recipe.seed)
    train, test = (tuple(t.to(device) for t in pair) for pair in select(data, recipe))
    config = run_config(recipe, train, test, device)
    if study.batch_stats and recipe.norm != "BN":
        raise ValueError(f"batch_stats=True evaluates BatchNorm with batch statistics; {recipe.norm} has none")
    if fresh:
        for path in paths.values():
            if os.path.exists(path):
                os.remove(path)
    done = _finished(paths, config, recipe, name, study, device, log)
    if done is not None:
        return done
    record = {"name": name, "config": config, "history": []}

    def resume(state):
        """The history so far: the checkpoint's, loaded into `state`, or none."""
        if os.path.exists(paths["checkpoint"]):
            _resume(paths["checkpoint"], state, record, device, log)
        else:
            log(f"{name:<10} training from scratch, writing {shown(paths['results'])}")
        write_json(paths["results"], record)
        return record["history"]

    def save(state, history):
        """After an epoch: (with study.batch_stats, BN also evaluated with test-batch statistics), then the
        checkpoint, then the record; if a run stops between the two writes, the resumed history comes from the
        checkpoint."""
        if study.batch_stats:  # after the epoch's timing, so that seconds stays comparable between runs
            evaluated = state["averaged"].module if state["averaged"] is not None else state["model"]
            history[-1]["test_loss_batch_stats"], history[-1]["test_acc_batch_stats"] = \
                evaluate(evaluated, test, recipe.batch_size, batch_stats=True)
        save_torch(paths["checkpoint"], {
            "config": config, "history": history, "rng": machine.rng_state(device),
            **{key: value.state_dict() for key, value in state.items() if key != "generator" and value is not None},
            "generator": state["generator"].get_state()})
        record["history"] = history
        write_json(paths["results"], record)

    evaluated, record["history"] = fit(recipe, train, test, device, resume=resume, save=save, name=name,
                                       stop_after=study.stop_after, progress=progress, log=log)
    if len(record["history"]) < recipe.epochs:  # stopped early (stop_after): resumable, as after an interruption
        return evaluated, record
    save_torch(paths["weights"], {"config": config, "state_dict": evaluated.state_dict()})
    # The results file pins its weights: a study that loads them checks this (records.load_weights)
    record["weights_sha256"] = sha256_file(paths["weights"])
    write_json(paths["results"], record)
    os.remove(paths["checkpoint"])
    return evaluated, record


def _finished(paths, config, recipe, name, study, device, log):
    """(model, record) of a run already done (finished, or stopped where study.stop_after asks and without its
    checkpoint), or None if it is to be trained; files of other settings raise SettingsClash."""
    if not os.path.exists(paths["results"]):
        return None
    record = read_record(paths["results"])
    clash = differences(record["config"], config, RECIPE_KEYS)
    if clash:
        raise settings_clash(paths["results"], clash)
    if len(record["history"]) >= recipe.epochs:  # finished: its model, if its weights were kept
        log(f"{name:<10} finished, loaded from {shown(paths['results'])}")
        weights = paths["weights"]
        return (load_weights(weights, device)[0] if os.path.exists(weights) else None), record
    if study.stop_after and len(record["history"]) >= study.stop_after and not os.path.exists(paths["checkpoint"]):
        # stopped there (studies/search.py's stress test), and its checkpoint is not here (a fresh clone): what it
        # holds is all that was asked for, so it is loaded rather than trained again
        log(f"{name:<10} stopped after epoch {len(record['history'])}, loaded from {shown(paths['results'])}")
        return None, record
    return None


def _resume(path, state, record, device, log):
    """Continue from the checkpoint at `path`: the model, optimizer, schedule, average and generators of `state`
    take its states, and `record` its history; a checkpoint of other settings raises SettingsClash."""
    config = record["config"]
    # Read to the CPU whatever the device: load_state_dict copies each state onto the device, and the random
    # generators' states must stay CPU byte tensors (Generator.set_state and torch.cuda.set_rng_state take only
    # those), which map_location=device would move to the GPU.
    saved = load_torch(path)
    # A CPU run's last digits depend on its thread count; a GPU run's do not (a Colab VM may have other vCPUs)
    keys = RECIPE_KEYS + ["device"] + (["threads"] if device.type == "cpu" else [])
    clash = differences(saved["config"], config, keys)
    if clash:
        raise settings_clash(path, clash, "resume it with those settings, or ")
    try:
        for key, value in state.items():
            if key != "generator" and value is not None:
                value.load_state_dict(saved[key])
        state["generator"].set_state(saved["generator"])
        machine.set_rng_state(saved["rng"], device)
        record["history"] = list(saved["history"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise RecordError(f"{shown(path)} is not a checkpoint of this run ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); {how_to_restore(path)}") from None
    done = len(record["history"])
    log(f"{record['name']:<10} resuming after epoch {done} from {shown(path)}")
    for key in ("hardware", "isa", "cpu"):
        if key not in saved["config"] and config[key]:  # a checkpoint from before the key was recorded
            config[key] = f"not recorded until epoch {done}, then {config[key]}"
            continue
        before = saved["config"].get(key)
        if before and before != config[key] and not before.endswith(f"then {config[key]}"):
            # Another kind of processor (or instruction set) picks other kernels, so the rest of the run's numbers
            # differ in the last digits from what the first would have given: the record says which epochs ran where.
            log(f"{record['name']:<10} note: epochs 1-{done} ran on {before}, the rest runs on {config[key]}")
            config[key] = f"{before} until epoch {done}, then {config[key]}"
        elif before:
            config[key] = before


def _worker_init(device):
    """A worker process: one CPU thread (several single-thread processes share a CPU's cores better than one
    process whose threads spin-wait for each other), the allocator setting, Ctrl-C left to the parent, which stops
    the workers itself, and an end with the process that started it if that is killed."""
    machine.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm would otherwise make a multiprocessing lock (a semaphore) here, which a worker stopped early leaves behind
    # and the resource tracker then warns about; workers show no bars, so a thread lock is enough.
    tqdm.set_lock(threading.RLock())
    machine.tune_malloc()
    if device.type == "cpu":
        torch.set_num_threads(1)


def _worker_run(fit, recipe, data, device, kw, lines):
    """run() in a worker process; its log lines go to the parent through the queue `lines`, which prints them (a
    worker's own output would not reach a notebook's cell)."""
    return run(fit, recipe, data, device=device, progress=False, log=lines.put, **kw)[1]


def effective_jobs(device, jobs, runs):
    """The runs trained at once: `jobs` (None: machine.default_jobs) on a CPU, 1 on a GPU."""
    jobs = machine.default_jobs(device, runs) if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer or None (the default for the machine), got {jobs!r}")
    return jobs if device.type == "cpu" else 1


def run_all(fit, recipes, data, *, device, out=RUNS, jobs=None, study=Study(), progress=True, fresh=False):
    """run(fit, ...) for every recipe (finished runs are loaded, unfinished ones resume), in this process or, with
    jobs > 1, in that many worker processes (on a GPU, runs always go one after another in this process). On a CPU
    every run computes with one thread either way, so its numbers do not depend on `jobs` (None: machine.default_jobs,
    which on a CPU trains up to twice as many runs as cores all at once). study: what a study adds
    (Study: the folder, the runs' names, BN's batch statistics, an epoch to stop after, the invocations' log).
    A user's error in a worker (settings, files) is raised here as itself, without the worker's traceback.
    An invocation that trains anything says its wall time at the end and appends it, with the jobs and device, to
    OUT/results/FOLDER/study.invocations.

    Returns (records, models): {name: [record per seed]} in recipe order and {name: the first seed's model}
    (left out where a finished run's weights were not kept).
    """
    asked = jobs
    jobs = effective_jobs(device, jobs, len(recipes))
    if asked and asked > jobs:
        # Several processes sharing one GPU have not been measured to train faster than one (docs/performance.md).
        tqdm.write(f"on {device}, the runs train one after another in this process (jobs 1, not {asked})")
    study = replace(study, folder=experiment_folder(recipes) if study.folder is None else study.folder)
    names = study.names or [r.name for r in recipes]
    if len(set(zip(names, (r.seed for r in recipes)))) < len(recipes):
        raise ValueError("two runs share a name and seed, so they would write the same files")
    kws = [dict(out=out, name=n, fresh=fresh, study=replace(study, batch_stats=study.batch_stats and r.norm == "BN"))
           for r, n in zip(recipes, names)]
    todo = sum(fresh or not is_finished(run_paths(out, study.folder, n, r.seed)["results"], study.stop_after)
               for r, n in zip(recipes, names))
    start = time.perf_counter()
    # as many processes as there are runs to train at most; one run, or none (every run only loaded): this process,
    # since worker processes would only cost their start
    jobs = min(jobs, todo) if todo > 1 else 1
    if jobs == 1 or len(recipes) == 1:
        # Move the data to the device once for all runs; run()'s own move is then a no-op. Workers get the
        # data as it came (pickled to each process) and move it themselves.
        data = tuple(tuple(t.to(device) for t in pair) for pair in data)
        results = [run(fit, r, data, device=device, progress=progress, **kw) for r, kw in zip(recipes, kws)]
        done = [record for _, record in results]
        trained = {record["name"]: model for model, record in reversed(results)}  # the first seed's
    else:
        done, trained = _in_workers(fit, recipes, data, device, jobs, kws), {}
    if todo:  # an invocation that only loads finished runs is not part of the experiment's time
        seconds = time.perf_counter() - start
        tqdm.write(f"{todo} run{'s' if todo > 1 else ''} trained in {seconds / 60:.1f} min (wall time), "
                   f"{jobs} at a time" + (f" on {os.cpu_count()} CPU cores" if device.type == "cpu" else ""))
        log_path = os.path.join(out, "results", study.folder, study.invocations)
        invocations = read_json(log_path, "log of invocations") if os.path.exists(log_path) else {"invocations": []}
        invocations["invocations"].append({
            "runs_planned": len(recipes), "runs_trained": todo, "runs": sorted(set(names)), "jobs": jobs,
            "device": str(device), "cpus": os.cpu_count(), "threads": 1 if device.type == "cpu" else None,
            "wall_seconds": seconds})
        write_json(log_path, invocations)
    records, models = {}, {}
    for recipe, record in zip(recipes, done):
        name = record["name"]
        if name not in records:
            weights = run_paths(out, study.folder, name, recipe.seed)["weights"]
            model = trained.get(name) or (load_weights(weights, device)[0] if os.path.exists(weights) else None)
            if model is not None:
                models[name] = model
        records.setdefault(name, []).append(record)
    return records, models


def _in_workers(fit, recipes, data, device, jobs, kws):
    """[record] of run(fit, recipe, **kw) for each recipe, in `jobs` worker processes; their log lines are printed
    here."""
    # Forking this process could hang a worker (its OpenMP pool may have run). A fork server is a clean interpreter,
    # started once with this process's environment (the instruction-set pin), that imports torch and this module
    # and then forks each worker and the manager from itself, so none of them pays the ~3 s of CPU of importing them
    # that a "spawn" start pays (docs/performance.md; spawn is the start method where there is no fork server:
    # Windows).
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # this module, with torch and the library, and fit's (utils): its name only, imported there, not here
        context.set_forkserver_preload([__name__, fit.__module__])
    pool = context.Pool(min(jobs, len(recipes)), _worker_init, (device,))
    manager = SyncManager(ctx=context)  # its queue can be passed to the workers with each task
    manager.start(machine.die_with_parent)
    lines = manager.Queue()

    def print_lines():
        while not lines.empty():
            tqdm.write(lines.get())
    try:
        tasks = [pool.apply_async(_worker_run, (fit, r, data, device, kw, lines)) for r, kw in zip(recipes, kws)]
        while waiting := [t for t in tasks if not t.ready()]:
            # A timed wait (an untimed one would not see Ctrl-C until the runs end) on a task still running:
            # waiting on a finished one returns at once, and the loop would take a whole core from the workers.
            waiting[0].wait(0.5)
            print_lines()
        print_lines()
        try:
            done = [t.get() for t in tasks]  # re-raises a worker's error here
        except USER_ERRORS as e:
            # A user's error (settings, a file): its message alone, without the worker's traceback that
            # multiprocessing chains to it (a bug's error keeps it).
            raise e.with_traceback(None) from None
        pool.close()
        return done
    except BaseException:  # Ctrl-C or an error: stop the other runs now; their finished epochs are kept
        pool.terminate()
        raise
    finally:
        pool.join()
        manager.shutdown()


def load_experiment(recipes, out=ROOT):
    """(records, models) as run_experiments returns them, read from finished runs under `out` (by default the
    repository's committed runs) in the recipes' settings folder, without training: for showing them in seconds."""
    records, models = {}, {}
    folder = experiment_folder(recipes)
    for recipe in recipes:
        paths = run_paths(out, folder, recipe.name, recipe.seed)
        if not os.path.exists(paths["results"]):
            committed = "" if os.path.abspath(out) != ROOT else (
                " (the committed runs are seeds 0 to 9 of the default settings: show those, or train these)")
            raise FileNotFoundError(f"{paths['results']} does not exist{committed}")
        record = read_record(paths["results"])
        if Recipe.from_config(record["config"]) != recipe or len(record["history"]) < recipe.epochs:
            raise ValueError(f"{paths['results']} is not a finished run of {recipe}")
        if recipe.name not in records and os.path.exists(paths["weights"]):
            model, config = load_weights(paths["weights"])
            if config != record["config"]:
                raise ValueError(f"{paths['weights']} and {paths['results']} come from different runs")
            models[recipe.name] = model
        records.setdefault(recipe.name, []).append(record)
    return records, models
