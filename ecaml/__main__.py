"""`python -m ecaml ...` entry point."""

import os
import sys

NICE_ENV = "ECAML_NICE"  # set by ecaml.serve.jobs for jobs that share the machine with the app's viewers


def _lower_priority_if_asked() -> None:
    # Before torch is imported: threads started later inherit the lower priority, those started earlier would not.
    niceness = os.environ.get(NICE_ENV, "").strip()
    if not niceness:
        return
    try:
        os.nice(int(niceness))
    except (ValueError, OSError):
        pass  # an unusable value or a platform without nice: train at normal priority


if __name__ == "__main__":
    _lower_priority_if_asked()
    from ecaml.cli import main

    sys.exit(main())
