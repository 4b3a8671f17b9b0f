"""What a run leaves behind: its directory (rundir.py), report (report.py), figures (plots.py)
and terminal tables (show.py)."""
