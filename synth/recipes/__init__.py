"""The shipped recipes, one file each; every module here registers itself with ``@recipe``."""
