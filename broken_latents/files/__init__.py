"""Files and folders written whole (atomic.py): what every writer shares, from run directories and
sweeps down to the language world's build, so it sits below all of them."""
