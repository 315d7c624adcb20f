"""`python -m wa_mqtt` → the command line."""

import sys

from .cli import main

sys.exit(main())
