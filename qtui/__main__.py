import sys

from qtui.cli import main

sys.exit(main())
