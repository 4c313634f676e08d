import sys

from tiue.cli import main

sys.exit(main())
