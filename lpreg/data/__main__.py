"""``python -m lpreg.data prepare ...``: see ``lpreg/data/prepare.py``."""

import sys

from lpreg.data.prepare import main

sys.exit(main())
