"""Render every generated table in README.md and docs/*.md from the JSON files in results/, and redraw the figures
that come from them; --check changes nothing and fails when a file is stale.

    python -m tools.report            # rewrite the tables and figures
    python -m tools.report --check    # exit 1 if README.md or docs/ do not match results/

Each study owns its tables (studies/, benchmarks/); this module only knows where each one goes: a block
<!-- NAME:start --> ... <!-- NAME:end --> is replaced by TABLES[NAME](results)."""
import argparse
import os
import re
import sys

from benchmarks import end_to_end, evaluation, launches, options, pipeline
from mnist_norms.figures import save_figure
from mnist_norms.records import ROOT
from studies import batch_size, experiment, findings, normalizations, recipe_search, search, shift, tolerance
from studies.lr_sweep import report as lr_sweep

TABLES = {
    "first-screen": findings.first_screen,
    "norm-buys": findings.norm_buys_text,
    "headline": experiment.headline_table,
    "seeds": experiment.seeds_table,
    "steady": experiment.steady_table,
    "findings": experiment.findings_table,
    "results": experiment.results_table,
    "one-minute": experiment.one_minute_table,
    "speed": experiment.speed_table,
    "worked-example": lambda results: "```text\n" + normalizations.worked_example() + "\n```",
    "search": recipe_search.search_markdown,
    "schedule-search": recipe_search.schedule_markdown,
    "stress": search.stress_markdown,
    "guard-search": search.guard_markdown,
    "batch-size": batch_size.batch_size_table,
    "lr-sweep": lr_sweep.sweep_table,
    "lr-sweep-scales": lr_sweep.scales_table,
    "lr-sweep-init": lr_sweep.init_table,
    "lr-sweep-failures": lr_sweep.failures_table,
    "tolerance": tolerance.markdown,
    "shift-sets": shift.accuracy_table,
    "shift-differences": shift.differences_table,
    "benchmark": pipeline.benchmark_table,
    "options": options.options_table,
    "end-to-end": end_to_end.end_to_end_table,
    "evaluation": evaluation.evaluation_table,
    "launches": launches.launches_table,
}
FILES = [os.path.join(ROOT, f) for f in ("README.md", "docs/experiments.md", "docs/performance.md")]
FIGURES = {"seeds": experiment.seeds_figure, "seed_curves": experiment.seed_curves_figure,
           "shift_groups": shift.groups_figure}


def render(text, results):
    """Replace the body between each <!-- NAME:start --> and <!-- NAME:end --> pair in text; an unknown
    NAME is an error."""
    for name in re.findall(r"<!-- ([\w-]+):start -->", text):
        if name not in TABLES:
            raise ValueError(f"unknown block <!-- {name}:start -->; known: {', '.join(TABLES)}")
        pattern = re.compile(rf"(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"<!-- {name}:start --> has no <!-- {name}:end -->")
        text = pattern.sub(lambda m: m.group(1) + TABLES[name](results) + "\n" + m.group(2), text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--files", nargs="+", default=FILES, help="the files whose generated blocks are rewritten")
    p.add_argument("--results", default=os.path.join(ROOT, "results"), help="where the run JSON files are")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = p.parse_args(argv)
    texts = {}
    for path in args.files:
        with open(path) as f:
            texts[path] = f.read()
    found = {name for text in texts.values() for name in re.findall(r"<!-- ([\w-]+):start -->", text)}
    if args.files == FILES and set(TABLES) - found:
        raise ValueError(f"no file has the blocks {sorted(set(TABLES) - found)}")
    stale = 0
    for path, text in texts.items():
        new = render(text, args.results)
        if args.check:
            if new != text:
                print(f"{path} does not match {args.results}: run `python -m tools.report`", file=sys.stderr)
                stale = 1
            continue
        if new != text:
            with open(path, "w") as f:
                f.write(new)
        print(f"{'updated' if new != text else 'unchanged'}: {os.path.relpath(path)}")
    if not args.check:
        static = os.path.join(os.path.dirname(os.path.abspath(args.results)), "static")
        for name, draw in FIGURES.items():
            fig = draw(args.results)
            if fig is not None:
                print(f"wrote {os.path.relpath(save_figure(fig, os.path.join(static, name + '.png')))}")
    if args.check and not stale:
        print(f"{', '.join(os.path.relpath(p) for p in texts)} match {args.results}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
