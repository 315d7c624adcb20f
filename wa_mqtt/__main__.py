"""`python -m wa_mqtt` → the command line."""

import sys

from .cli import main

if __name__ == "__main__":  # the engine fork server imports this module again as __mp_main__
    sys.exit(main())
