"""`make mutate`: mutation testing (cosmic-ray) of the modules that decide answers and state.

Each module is mutated against the fast tests that cover it (its own test command), in a copy of
the checkout (cosmic-ray edits files in place), on two lanes in parallel. A summary per module,
the overall kill rate and every survivor go to stdout and to .mutate/report.txt.

    python tests/mutate/run.py [--lanes 2] [--only PATH ...] [--recheck]

--recheck runs only the survivors of the last run again, against the checkout's tests as they are
now (after adding tests that should kill them), in a lane of its own; its report is .mutate/recheck.txt.

Not run by CI: about 51 CPU minutes (26 min of wall time on two idle cores); see tests/mutate/README.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".mutate"
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider"
PROPS = "tests/unit/test_properties.py"
HEADS = [f"shared/detserve/processing/heads/{h}.py" for h in ("boxes", "yolo", "picodet", "centerface")]
HEAD_TESTS = ("tests/unit/test_heads.py tests/unit/test_heads_edges.py tests/unit/test_postprocess.py "
              "tests/unit/test_answer_filters.py tests/unit/test_packages.py")

# module -> the tests whose failure kills its mutants (fast: no worker processes, but for tasks.py)
TARGETS: dict[str, str] = {
    "shared/detserve/service/status.py": "tests/unit/test_store.py tests/unit/test_deployments.py",
    "shared/detserve/service/deployments.py": "tests/unit/test_deployments.py",
    "services/api/detserve_api/auth.py": "tests/unit/test_auth_rules.py",
    "shared/detserve/service/artifacts.py": "tests/unit/test_artifact_store.py",
    "shared/detserve/service/packages.py": "tests/unit/test_packages.py",
    "shared/detserve/processing/headers.py": "tests/unit/test_headers.py",
    "shared/detserve/processing/preprocess.py":
        "tests/unit/test_preprocess.py tests/unit/test_packages.py tests/unit/test_box_geometry.py "
        f"{PROPS}::test_letterbox_then_the_inverse_mapping_gives_back_the_image",
    "shared/detserve/processing/postprocess.py":
        "tests/unit/test_postprocess.py tests/unit/test_answer_filters.py tests/unit/test_box_geometry.py "
        f"tests/unit/test_packages.py {PROPS}",
    "shared/detserve/processing/image.py":
        "tests/unit/test_image.py tests/unit/test_box_geometry.py "
        f"{PROPS}::test_the_image_check_agrees_with_pillows_decode",
    # the model heads: box decoding per kind of model, reached through postprocess.decode
    **dict.fromkeys(HEADS, HEAD_TESTS),
    "shared/detserve/processing/decoders.py":
        "tests/unit/test_heads.py tests/unit/test_heads_edges.py tests/unit/test_postprocess.py",
    "shared/detserve/processing/options.py":
        "tests/unit/test_options.py tests/unit/test_options_edges.py tests/unit/test_answer_filters.py "
        "tests/unit/test_heads.py",
    # the scheduler's tasks only run inside the scheduler process: the end-to-end auto-stop tests
    "services/scheduler/detserve_scheduler/tasks.py":
        "tests/integration/test_auto_stop.py -k 'token_after_a_scheduler_restart and patch or sweep_catches "
        "or silent_for_three or half_done'",
}
TIMEOUT = {"services/scheduler/detserve_scheduler/tasks.py": 300.0}

# Operators left out: they multiply the mutants without testing more (bit and power operators in
# place of arithmetic, identity tests in place of comparisons, every comparison in place of ==).
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_.*_(BitOr|BitAnd|BitXor|LShift|RShift|Pow|Mod|FloorDiv)$",
    r"core/ReplaceBinaryOperator_(BitOr|BitAnd|BitXor|LShift|RShift|Pow|Mod|FloorDiv)_",
    r"core/ReplaceComparisonOperator_(Eq|NotEq|Lt|LtE|Gt|GtE|In|NotIn)_(Is|IsNot)$",
    r"core/ReplaceComparisonOperator_(Eq|NotEq)_(Lt|LtE|Gt|GtE)$",
    r"core/ReplaceComparisonOperator_(Lt|LtE|Gt|GtE)_(Eq|NotEq)$",
    r"core/VariableReplacer", r"core/VariableInserter",
    r"core/ReplaceUnaryOperator_USub_(UAdd|Invert|Not)$",
]
# Modules full of indices and byte offsets: +-1 on each number would double their run time.
NO_NUMBERS = {"shared/detserve/processing/postprocess.py", "shared/detserve/processing/image.py",
              "shared/detserve/service/packages.py",
              *HEADS}


def config(module: str, tests: str) -> str:
    operators = EXCLUDED_OPERATORS + (["core/NumberReplacer"] if module in NO_NUMBERS else [])
    excluded = ", ".join(f"'{e}'" for e in operators)
    return (f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {TIMEOUT.get(module, 120.0)}\n'
            f'excluded-modules = []\ntest-command = "{PYTEST} {tests}"\n\n'
            f'[cosmic-ray.distributor]\nname = "local"\n\n'
            f"[cosmic-ray.filters.operators-filter]\nexclude-operators = [{excluded}]\n")


def copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file() and not name.startswith(".mutate/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def session_of(module: str) -> str:
    return module.replace("/", "_").removesuffix(".py") + ".sqlite"


def recheck_module(lane: Path, module: str, log) -> str:
    """Copy a finished module's session to `lane` (a fresh copy of the checkout, with the tests as
    they are now), forget its survivors' results, and run those again."""
    import sqlite3

    name = session_of(module)
    source = next(p for p in WORK.glob(f"lane[0-9]*/{name}"))
    if (source.parent / module).read_bytes() != (ROOT / module).read_bytes():
        # mutants are found again by operator and occurrence: in a changed module they would land
        # elsewhere; such a module needs a full run (--only it)
        raise SystemExit(f"{module} changed since its run: run it in full with --only {module}")
    db = lane / name
    shutil.copy2(source, db)
    db.with_suffix(".toml").write_text(config(module, TARGETS[module]))  # today's test command
    baseline = subprocess.run(f"{PYTEST} {TARGETS[module]}", shell=True, cwd=lane, stdout=log, stderr=log)
    if baseline.returncode != 0:  # every mutant would count as killed
        raise SystemExit(f"{module}: its tests fail unmutated; see {log.name}")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
    subprocess.run([tool("cosmic-ray"), "exec", db.with_suffix(".toml").name, db.name], cwd=lane,
                   check=True, stdout=log, stderr=log)
    return subprocess.run([tool("cr-report"), "--show-pending", "--show-diff", db.name], cwd=lane, check=True,
                          capture_output=True, text=True).stdout


def run_module(lane: Path, module: str, log) -> str:
    name = module.replace("/", "_").removesuffix(".py")
    cfg, db = lane / f"{name}.toml", lane / f"{name}.sqlite"
    cfg.write_text(config(module, TARGETS[module]))
    db.unlink(missing_ok=True)
    baseline = subprocess.run(f"{PYTEST} {TARGETS[module]}", shell=True, cwd=lane, stdout=log, stderr=log)
    if baseline.returncode != 0:  # every mutant would count as killed
        raise SystemExit(f"{module}: its tests fail unmutated; see {log.name}")
    for cmd in ([tool("cosmic-ray"), "init", cfg.name, db.name],
                [tool("cr-filter-operators"), db.name, cfg.name],
                [tool("cosmic-ray"), "exec", cfg.name, db.name]):
        subprocess.run(cmd, cwd=lane, check=True, stdout=log, stderr=log)
    return subprocess.run([tool("cr-report"), "--show-pending", "--show-diff", db.name], cwd=lane, check=True,
                          capture_output=True, text=True).stdout


def summarise(module: str, report: str) -> tuple[int, int, list[str]]:
    """(killed, total) and the survivors' descriptions from cr-report's text."""
    blocks = report.split("[job-id] ")[1:]
    survivors = [b.strip() for b in blocks if "test outcome: TestOutcome.SURVIVED" in b]
    total = sum(1 for b in blocks if "test outcome:" in b and "SKIPPED" not in b)
    return total - len(survivors), total, survivors


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--recheck", action="store_true")
    args = parser.parse_args()
    # pytest's start-up is most of a mutant's cost: no plugins it does not need (schemathesis and
    # hypothesis's own load two seconds of imports), and fewer property examples
    os.environ.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", DETSERVE_PROPERTY_EXAMPLES="30")
    modules = args.only or list(TARGETS)
    finished = {m for p in WORK.glob("lane[0-9]*/*.sqlite") for m in TARGETS if p.name == session_of(m)}
    if args.recheck:  # in a lane of its own, beside any run still going
        modules, args.lanes = [m for m in modules if m in finished], 1
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    # the end-to-end module first, on a lane of its own: as the last job it would run alone at the end
    queue = sorted(modules, key=lambda m: m not in TIMEOUT)
    results: dict[str, str] = {}
    lock = threading.Lock()
    started = time.monotonic()

    def lane(index: int) -> None:
        path = WORK / ("recheck" if args.recheck else f"lane{index}")
        shutil.rmtree(path, ignore_errors=True)
        copy_checkout(path)
        with open(path.with_suffix(".log"), "a") as log:
            while True:
                with lock:
                    if not queue:
                        return
                    module = queue.pop(0)
                began = time.monotonic()
                if args.recheck:
                    report = recheck_module(path, module, log)
                else:
                    report = run_module(path, module, log)
                with lock:
                    results[module] = report
                    killed, total, _ = summarise(module, report)
                    took = time.monotonic() - began
                    print(f"{module}: {killed}/{total} killed in {took:.0f} s", flush=True)

    WORK.mkdir(exist_ok=True)
    threads = [threading.Thread(target=lane, args=(i,)) for i in range(args.lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines, all_killed, all_total = [], 0, 0
    for module in modules:
        killed, total, survivors = summarise(module, results.get(module, ""))
        all_killed, all_total = all_killed + killed, all_total + total
        lines.append(f"{module}: {killed}/{total} killed")
        lines += [f"  SURVIVED {s}" for s in survivors]
    rate = 100.0 * all_killed / all_total if all_total else 0.0
    # CPU time of every process the run waited for (cosmic-ray and its pytests): on a shared host
    # the wall time says little; CPU seconds / lanes is what an idle machine with that many cores takes
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    lines.append(f"overall: {all_killed}/{all_total} mutants killed ({rate:.1f} %) in "
                 f"{(time.monotonic() - started) / 60:.1f} min wall, {cpu / 60:.1f} min CPU "
                 f"({cpu / max(all_total, 1):.1f} s a mutant; {cpu / 60 / args.lanes:.1f} min on "
                 f"{args.lanes} idle cores)")
    (WORK / ("recheck.txt" if args.recheck else "report.txt")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
