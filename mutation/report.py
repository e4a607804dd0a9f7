"""Per-file mutation score of the last `mutmut run`, surviving mutants judged equivalent set aside.

Run from the repository root after `mutmut run` (`make mutate` does both). Prints one row per mutated
file (from ``[tool.mutmut] only_mutate``), then every survivor that is not listed as equivalent in
mutation/equivalent.toml, with its diff. Exits 1 when a file kills less than the target share of its
non-equivalent mutants, when an equivalent entry no longer matches any survivor (stale: remove it), or
when a mutant's session ended in a pytest internal error.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

TARGET = 0.95
MUTMUT = str(Path(sys.executable).with_name("mutmut"))
# mutmut's statuses: a timeout or a segfault under a mutant is a kill; "no tests" is a survivor.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
SURVIVED = {"survived", "no tests", "suspicious"}
# pytest's exit code for an internal error. mutmut counts it as a kill, but it means a hook or plugin
# broke the session, not that a test saw the mutant: such a mutant was not tested.
INTERNAL_ERROR = 3
BROKEN = "internal error"
_NAME = re.compile(r"^(?P<module>[\w.]+)\.x(?:ǁ(?P<cls>\w+)ǁ|_)(?P<func>\w+?)__mutmut_\d+$")


@dataclass
class FileScore:
    """Counts for one mutated file."""

    path: str
    statuses: Counter[str] = field(default_factory=Counter)
    equivalent: int = 0

    @property
    def killed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in KILLED)

    @property
    def meaningful(self) -> int:
        judged = self.killed + sum(n for s, n in self.statuses.items() if s in SURVIVED)
        return judged - self.equivalent

    @property
    def score(self) -> float:
        return self.killed / self.meaningful if self.meaningful else 1.0


def _module_of(path: str) -> str:
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def _results() -> dict[str, str]:
    out = subprocess.run([MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    statuses = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            statuses[name] = status
    return statuses


def _internal_errors() -> set[str]:
    # Read from mutmut's result files: `mutmut results` reports these as killed.
    names = set()
    for meta in Path("mutants").rglob("*.py.meta"):
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        names |= {name for name, code in codes.items() if code == INTERNAL_ERROR}
    return names


def _added_lines(name: str, path: str) -> str:
    # The lines a mutant adds to its function, read from mutmut's copy (no `mutmut show` per mutant).
    mutated = Path("mutants") / path
    spans = json.loads(mutated.with_name(mutated.name + ".spans").read_text(encoding="utf-8"))["spans"]
    lines = mutated.read_text(encoding="utf-8").splitlines()
    short = name.rsplit(".", 1)[1]

    orig = short.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"

    def body(key: str) -> list[str]:
        start, end = spans[key]
        # The mutant's def line names the mutant: spelled as the original's, so only the change differs.
        return [line.strip().replace(key + "(", orig + "(") for line in lines[start - 1 : end]]

    diff = difflib.ndiff(body(orig), body(short))
    return " ".join(" ".join(d[2:] for d in diff if d.startswith("+ ")).split())


def _function(name: str) -> tuple[str, str]:
    match = _NAME.match(name)
    if match is None:
        return name, "?"
    func = match["func"] if match["cls"] is None else f"{match['cls']}.{match['func']}"
    return match["module"], func


@dataclass(frozen=True)
class Equivalent:
    """One mutated line of an ``equivalent.toml`` entry (an entry lists one ``mutation`` or several)."""

    module: str
    function: str
    mutation: str

    def matches(self, module: str, function: str, added: str) -> bool:
        return (self.module, self.function) == (module, function) and " ".join(self.mutation.split()) == added


def _equivalents(path: Path) -> list[Equivalent]:
    if not path.exists():
        return []
    found = []
    for entry in tomllib.loads(path.read_text(encoding="utf-8")).get("equivalent", []):
        lines = entry["mutations"] if "mutations" in entry else [entry["mutation"]]
        found += [Equivalent(entry["module"], entry["function"], line) for line in lines]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--equivalent", type=Path, default=Path("mutation/equivalent.toml"))
    args = parser.parse_args()

    config = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    files = {_module_of(p): FileScore(p) for p in config["only_mutate"]}
    statuses = _results()
    broken = _internal_errors()
    statuses |= dict.fromkeys(broken, BROKEN)
    equivalents = _equivalents(args.equivalent)
    used = [False] * len(equivalents)
    unexplained: list[tuple[str, str]] = []
    for name, status in sorted(statuses.items()):
        module, func = _function(name)
        score = files.get(module)
        if score is None:
            continue
        score.statuses[status] += 1
        if status not in SURVIVED:
            continue
        added = _added_lines(name, score.path)
        # Two mutants of a function can add the same line for different reasons (`found = None` in two
        # branches): each takes an entry of its own while one is left.
        matching = [i for i, entry in enumerate(equivalents) if entry.matches(module, func, added)]
        if matching:
            i = next((i for i in matching if not used[i]), matching[0])
            used[i] = True
            score.equivalent += 1
        else:
            unexplained.append((name, added))

    print("| file | mutants | killed | survived, equivalent | survived, not equivalent | score |")
    print("|---|--:|--:|--:|--:|--:|")
    failing = False
    for score in files.values():
        survived = sum(n for s, n in score.statuses.items() if s in SURVIVED)
        total = sum(score.statuses.values())
        print(
            f"| `{score.path}` | {total} | {score.killed} | {score.equivalent} | "
            f"{survived - score.equivalent} | {score.score:.1%} |"
        )
        failing |= score.score < TARGET
    if broken:
        print(f"\nNot tested, their session ended in a pytest internal error: {len(broken)} mutant(s), e.g.")
        print(f"  {min(broken)}\n(`mutmut browse` reruns one and shows the traceback.)")
        failing = True
    ended = KILLED | SURVIVED | {BROKEN}
    not_run = sum(n for f in files.values() for s, n in f.statuses.items() if s not in ended)
    if not_run:
        print(f"\n{not_run} mutants were not run (skipped or not checked): the run did not finish.")
        failing = True
    if unexplained:
        print("\nSurvivors not judged equivalent (add a test, or an entry in mutation/equivalent.toml):")
        for name, added in unexplained:
            print(f"  {name}: {added}")
    stale = [e for e, hit in zip(equivalents, used, strict=True) if not hit]
    if stale:
        print("\nEquivalent entries matching no survivor (remove them):")
        for entry in stale:
            print(f"  {entry.module}.{entry.function}: {entry.mutation}")
    print(f"\nTarget: {TARGET:.0%} of non-equivalent mutants killed in each file.")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
