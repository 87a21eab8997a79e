"""Train BN + L1, LN and GN on MNIST: results/*.json, weights/*.pt, the figures in static/ and a summary table.

Runs go to --out (default runs/, a folder of your own that git ignores), in a subfolder named after the settings
that differ from the experiment's defaults (runs/results/epochs1_limit2000/ ...), so that no two sets of settings
share files. The committed runs are written only by asking for them: --out . (docs/experiments.md, Reproduce);
`python train.py --out .` on them finds every run finished and only redraws static/.

Runs resume: run the same command again after an interruption and each unfinished run continues from its last
finished epoch, while finished runs are loaded, not retrained. --rerun FILE trains again exactly the run a results
file records (in OUT/results/rerun/) and says whether its history came out identical.
"""
import os
import shlex
import sys

import torch

import cli
import machine
import utils
from augment import AFFINE, AFFINE_BEFORE_RECORD
from data import MNIST_SHA256, load_mnist, select
from figures import experiment_figures, save_figures
from recipe import ABLATION_GROUPS, L1, ablations, experiment, experiment_folder, settings_folder, Recipe
from records import format_summary, read_record, run_paths, shown


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_recipe_arguments(p)
    p.add_argument("--batch-size", type=cli.positive_int, default=cli.DEFAULT.batch_size, help="training batch size")
    p.add_argument("--l1", type=cli.number(float, "a finite number >= 0", 0), default=L1,
                   help="L1 weight added to the BN run's loss (LN and GN train without it); 0 for none")
    p.add_argument("--ablation-seeds", nargs="+", type=cli.number(int, "a seed >= 0", 0), default=[],
                   metavar="SEED", help="also train, for these seeds, BN without L1 and GN with "
                   f"{' and '.join(map(str, ABLATION_GROUPS))} groups (one group is LN), with the same settings "
                   "(default: none)")
    p.add_argument("--val", type=cli.positive_int, default=None, metavar="N",
                   help="hold out the last N training images and evaluate on them instead of the test set "
                        "(for choosing settings; no figures)")
    p.add_argument("--rerun", metavar="FILE", default=None,
                   help="train again the run recorded in FILE (a results JSON), with its settings, CPU thread count and "
                        "instruction set, write it under OUT/results/rerun/, and compare its history with FILE's")
    p.add_argument("--rerun-epochs", type=cli.positive_int, default=None, metavar="N",
                   help="with --rerun: train only the run's first N epochs (of its schedule) and compare those "
                        "(default: all)")
    p.add_argument("--rerun-mkl", choices=MKL_BRANCHES, default=None, metavar="BRANCH",
                   help="with --rerun of a file that does not record affine_ops (made before that record: its "
                        "augmentation ran in Intel MKL, whose results follow the code branch MKL picks for the CPU): "
                        "run MKL in BRANCH (as MKL_CBWR=BRANCH), one of " + ", ".join(MKL_BRANCHES) + ". COMPATIBLE "
                        "is what MKL runs on AMD CPUs, so a file made on one reproduces on any x86-64 CPU with it "
                        "(default: the branch MKL picks for this CPU)")
    cli.add_run_arguments(p, jobs_default=1, jobs_help="runs trained at once, in that many processes with one CPU "
                          "thread each; 1: one after another in this process, with all threads (the faster for the "
                          "three models on 2 cores: docs/performance.md)")
    args = p.parse_args(argv)
    if args.val is not None and args.val >= MNIST_SHA256["train"][0]:
        p.error(f"argument --val: must be smaller than the 60000 training images, got {args.val}")
    if args.rerun and not os.path.isfile(args.rerun):
        p.error(f"argument --rerun: no such file: {args.rerun}")
    if args.rerun_epochs and not args.rerun:
        p.error("argument --rerun-epochs: only with --rerun FILE")
    if args.rerun_mkl and not args.rerun:
        p.error("argument --rerun-mkl: only with --rerun FILE")
    return args


def recipes(args):
    """(main runs, ablation runs) the command line asks for, each seed by seed (so that an interrupted invocation
    leaves whole pairs): each norm for each seed, L1 on the BN run only; the ablations for their seeds."""
    settings = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, **cli.schedule(args),
                    dropout=args.dropout, **cli.augmentation(args), precision=args.precision, val=args.val or 0,
                    limit=args.limit)
    main = experiment(args.norms, args.seeds, l1=args.l1, groups=args.groups, **settings)
    by_seed = lambda runs: sorted(runs, key=lambda r: r.seed)
    return by_seed(main), by_seed(ablations(args.ablation_seeds, **settings))


# MKL's code branches a rerun can ask for (MKL_CBWR's values; AUTO is its default choice)
MKL_BRANCHES = [b for b in machine.MKL_BRANCHES.values() if b not in ("unset", "AUTO")]
RERUN_INPUT = "--rerun takes a results file that train.py wrote, such as results/ln_seed0.json"


def recorded_isa(config):
    """The CPU instruction set a run's config records (machine.isa_in_use()); for runs from before it was recorded,
    read from `hardware` ("CPU AVX2": "avx2"; "CPU AVX512": "native: ATen avx512"), None for a GPU run."""
    if config.get("isa") or not config.get("hardware", "").startswith("CPU "):
        return config.get("isa")
    aten = config["hardware"].split()[1].lower()
    return machine.AVX2 if aten == machine.AVX2 else f"native: ATen {aten}"


def pin_for_rerun(args, saved):
    """Before anything runs: the device, instruction set and affine ops (args.affine_ops) the rerun of `saved` needs,
    or an error (exit 1) that says why this machine cannot reproduce it, before any training."""
    config, path = saved["config"], args.rerun
    args.affine_ops = config.get("affine_ops", AFFINE_BEFORE_RECORD)
    if args.rerun_mkl:
        if args.affine_ops != "mkl" or not config.get("device", "cpu").startswith("cpu"):
            sys.exit(f"train.py: error: {path} did not compute its augmentation with Intel MKL on a CPU, so "
                     f"--rerun-mkl does not apply to it")
        os.environ["MKL_CBWR"] = args.rerun_mkl  # read by MKL at its first call, which is yet to come
    if not config.get("device", "cpu").startswith("cpu"):
        print(f"note: {path} was trained on {config.get('hardware', 'a GPU')}; GPU runs are not bit-reproducible on "
              f"other kinds of GPU (and not promised on the same kind): expect other last digits")
        return
    args.device = torch.device("cpu")  # a CPU run is re-run on the CPU, even where a GPU is present
    expected = recorded_isa(config)
    made_on, vendor = config.get("cpu"), machine.cpu_vendor()
    other_vendor = made_on and vendor and f"({vendor})" not in made_on
    if args.affine_ops != "mkl":
        if other_vendor:
            print(f"note: {path} was made on {made_on}, and this CPU is {machine.cpu_name()}; no operation of its steps "
                  f"depends on the CPU's vendor, so it reproduces on any x86-64 CPU with AVX2 and FMA "
                  f"(docs/performance.md says on which CPUs that was checked)")
    else:
        branch = machine.mkl_branch()
        if args.rerun_mkl and not (branch or "").startswith(args.rerun_mkl + " "):
            sys.exit(f"train.py: error: --rerun-mkl {args.rerun_mkl} did not take effect (MKL runs {branch}): MKL "
                     f"refuses a branch the CPU cannot run")
        made = f"was made on {made_on}" if made_on else \
            "does not record the CPU that made it (docs/experiments.md, Reproduce, says which)"
        print(f"note: {path} {made} and computed its augmentation in Intel MKL (it predates affine_ops), whose "
              f"results follow the code branch MKL runs: it reproduces where MKL runs the branch it ran there; here "
              f"MKL runs {branch}. MKL runs COMPATIBLE on AMD CPUs, so a file made on one reproduces on any CPU with "
              f"--rerun-mkl COMPATIBLE")
    if expected == machine.AVX2:
        used = machine.pin_isa()
        if used != machine.AVX2:
            sys.exit(f"train.py: error: {path} was trained with its kernels pinned to AVX2, and this machine computes "
                     f"with {used} ({machine.why_not_pinnable() or 'torch chose its kernels too early'}): it cannot "
                     f"reproduce the run bit for bit")
        return
    used = machine.pin_isa(False)  # a run recorded with a CPU's native instruction set needs that same one
    if not expected:
        print(f"note: {path} does not record the CPU instruction set it ran with (it predates that record): it "
              f"reproduces only on the kind of CPU that made it (docs/experiments.md, Reproduce, says which); this one "
              f"computes with {used}")
    if expected and machine.parts(used)[0] != machine.parts(expected)[0]:
        sys.exit(f"train.py: error: {path} was trained with {expected} ({config.get('hardware')}), and this CPU "
                 f"computes with {used}: it lacks that instruction set (or has another), so the run cannot be "
                 f"reproduced bit for bit here; its last digits would differ from epoch 1 on")
    if expected and machine.parts(expected)[1] not in (None, machine.parts(used)[1]):
        print(f"note: {path} used oneDNN's {machine.parts(expected)[1]}, this CPU {machine.parts(used)[1]}: its "
              f"convolutions may differ in the last digits")


def rerun(args, saved, data):
    """--rerun FILE: the recorded run (`saved`) again, with its recipe, thread count and instruction set; 0 if its
    history is identical."""
    recipe = Recipe.from_config(saved["config"])
    threads = saved["config"].get("threads")
    if threads and args.device.type == "cpu":
        torch.set_num_threads(threads)
    print(f"re-running {args.rerun}: {recipe}, {torch.get_num_threads()} CPU threads, affine ops {args.affine_ops}"
          + ("" if threads else " (the file does not record its thread count)"))
    # A folder of its own, so that a rerun never finds (and loads) a run of the user's with the same settings, nor one
    # computed with other operations
    mkl = f"mkl{args.rerun_mkl or ''}" if args.affine_ops != AFFINE else ""
    folder = os.path.join("rerun", "_".join(filter(None, [settings_folder(recipe), mkl])))
    path = run_paths(args.out, folder, saved["name"], recipe.seed)["results"]
    if os.path.abspath(path) == os.path.abspath(args.rerun):
        sys.exit(f"train.py: error: --rerun would overwrite {args.rerun}; choose another --out")
    print(utils.LOG_HEADER)
    _, record = utils.run(recipe, data, device=args.device, out=args.out, folder=folder, name=saved["name"],
                          progress=not args.no_progress, fresh=args.fresh, stop_after=args.rerun_epochs,
                          affine_ops=args.affine_ops)
    # Every key the file records but seconds (a file from before a key was recorded, grad_norm_median for one, is
    # compared on the keys it has)
    keys = {k for e in saved["history"] for k in e} - {"seconds"}
    strip = lambda history: [{k: v for k, v in e.items() if k in keys} for e in history]
    new, old = strip(record["history"]), strip(saved["history"][:args.rerun_epochs])
    same = next((i for i, (a, b) in enumerate(zip(new, old)) if a != b), None)
    if same is None and len(new) == len(old):
        which = f"the first {len(new)} of its {len(saved['history'])}" if args.rerun_epochs else f"all {len(new)}"
        print(f"identical: {which} epochs of {shown(path)} equal {args.rerun} (every key it records but seconds)")
        return 0
    where = f"epoch {same + 1} differs: {new[same]} against {old[same]}" if same is not None else \
        f"{len(new)} epochs against {len(old)}"
    print(f"different: {where}")
    return 1


def main(argv=None):
    args = parse_args(argv)
    machine.tune_malloc()
    try:
        saved = read_record(args.rerun, own=RERUN_INPUT) if args.rerun else None  # before anything is loaded
        # Before torch's first operation (loading the data is one): the CPU instruction set, machine.py
        if saved:
            pin_for_rerun(args, saved)
        else:  # bf16 keeps oneDNN's own instruction set: its AVX-512 BF16 kernels, where the CPU has them
            machine.pin_isa(not args.native_isa, onednn=args.precision == "fp32")
        main_runs, ablation_runs = recipes(args) if not saved else ([], [])  # bad settings: an error before the data
        data = load_mnist(args.data)
        if saved:
            return rerun(args, saved, data)
        runs = main_runs + ablation_runs
        train, test = select(data, runs[0])
        print(f"device {args.device}, {args.precision}, {args.jobs} job{'s' if args.jobs > 1 else ''}; training on "
              f"{len(train[1])} images, evaluating on {len(test[1])} {'held-out training' if args.val else 'test'} "
              f"images")
        folder = experiment_folder(runs)
        print(f"runs go to {shown(os.path.join(args.out, 'results', folder))}{os.sep} (their weights and "
              f"figures to the same folder under weights{os.sep} and static{os.sep})")
        print(utils.LOG_HEADER)
        records, models = utils.run_experiments(runs, data, device=args.device, out=args.out, jobs=args.jobs,
                                                progress=not args.no_progress, fresh=args.fresh)
    except utils.USER_ERRORS as e:
        sys.exit(f"train.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\nstopped: every finished epoch is kept; resume with: "
                 f"{shlex.join(['python'] + sys.argv)}")
    print()
    print(format_summary(records))
    if args.val or args.no_figures:
        return 0
    main_names = {r.name for r in main_runs}  # the figures show the main runs
    records = {name: recs for name, recs in records.items() if name in main_names}
    models = {name: model for name, model in models.items() if name in main_names}
    written = save_figures(experiment_figures(records, models, data[1]), args.out, main_runs)
    print("wrote " + ", ".join(shown(w) for w in written))
    missing = [name for name in records if name not in models]
    if missing:
        print(f"no weights kept for {', '.join(missing)}: no misclassified figure for them (--fresh retrains)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
