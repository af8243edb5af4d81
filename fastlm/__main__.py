"""`python -m fastlm ...` is the `fastlm` command."""

import sys

from fastlm.cli import main

sys.exit(main())
