"""The commands: the `sfd` command line and the builders of the toy worlds. The top layer: may import every other."""
