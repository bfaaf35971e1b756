"""`python -m loadforge.sandbox`: the sandbox in the foreground (or managed, for start_sandbox)."""

import sys

from loadforge.sandbox.runner import main

sys.exit(main())
