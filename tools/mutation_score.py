"""The score of the last `make mutants`: mutants caught out of all, per module, then each survivor's diff.

Reads mutmut's results (`mutmut junitxml`: one test case per mutant, a failure for each that survived, skipped
for each not run);
docs/mutation.md says why each survivor is left.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter


def mutmut(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mutmut", *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"error: mutmut {' '.join(args)} failed ({out.stderr.strip() or out.stdout.strip()}); "
                 "run `make mutants` first")
    return out.stdout


def main() -> None:
    xml = mutmut("junitxml", "--suspicious-policy", "ignore", "--untested-policy", "skipped")
    total, survived, skipped, survivors = Counter(), Counter(), Counter(), []
    for case in ET.fromstring(xml).iter("testcase"):
        module = case.get("file") or "?"
        if case.find("skipped") is not None:  # not run (yet): a run cut short, or a module not run
            skipped[module] += 1
            continue
        total[module] += 1
        if case.find("failure") is not None:
            survived[module] += 1
            survivors.append(case.get("name", "").removeprefix("Mutant #"))
    if not total:
        sys.exit("error: mutmut has no results; run `make mutants` first")
    for module in sorted(total):
        caught = total[module] - survived[module]
        print(f"{module:<20} {caught:>4} of {total[module]:>4} caught ({100 * caught / total[module]:5.1f}%)"
              + (f", {skipped[module]} not run" if skipped[module] else ""))
    n, caught = sum(total.values()), sum(total.values()) - sum(survived.values())
    print(f"mutation score: {caught} of {n} mutants run caught ({100 * caught / n:.1f}%); {n - caught} survived")
    for mutant_id in survivors:
        print(mutmut("show", mutant_id).rstrip())


if __name__ == "__main__":
    main()
