"""`python -m fastlm.cli ...` is the `fastlm` command (for `torchrun -m fastlm.cli train ...`)."""

import sys

from fastlm.cli import main

sys.exit(main())
