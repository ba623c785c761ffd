"""`python -m mmbench.report DIR [DIR ...]`: the same as `mmbench-report`."""

import sys

from mmbench.report import main

sys.exit(main())
