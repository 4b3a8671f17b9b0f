"""From trained SAEs to typed metrics (metrics.py): matching, learned/broken/dead, peaks
(peaks.py) and absorption (absorption.py)."""
