"""Every command's exit codes, in one place.

0 ok; 1 a runtime failure (and ``run`` crashing); 2 a usage or configuration error (a
restart cannot fix it); ``validate`` and ``submit --wait`` also 3 (rejected, or the job
failed) and 4 (completed with failed records).
"""

OK, FAILURE, USAGE, REJECTED, RECORDS_FAILED = 0, 1, 2, 3, 4
