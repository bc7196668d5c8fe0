"""The score of the last `mutmut run` (`make mutants`): killed mutants out of all, then the survivors by name.

Reads mutants/mutmut-cicd-stats.json, which `mutmut export-cicd-stats` writes; docs/mutation.md says why each
survivor is left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STATS = Path("mutants/mutmut-cicd-stats.json")


def main() -> None:
    if not STATS.is_file():
        sys.exit(f"error: {STATS} not found; run `make mutants` (mutmut run, then mutmut export-cicd-stats)")
    s = json.loads(STATS.read_text())
    caught = s["killed"] + s["timeout"]  # a mutant that hangs the tests is caught too
    print(f"mutation score: {caught} of {s['total']} mutants caught ({100 * caught / s['total']:.1f}%): "
          f"{s['killed']} killed, {s['timeout']} timed out, {s['survived']} survived, {s['no_tests']} not covered "
          f"by the unit tests, {s['suspicious']} suspicious")
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results"], capture_output=True, text=True)
    print(listing.stdout.rstrip())


if __name__ == "__main__":
    main()
