"""Administration: backup and move, integrity checks, the doctor's report."""
