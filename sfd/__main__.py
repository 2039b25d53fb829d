import sys

from sfd.commands.cli import main

sys.exit(main())
