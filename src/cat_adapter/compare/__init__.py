"""``cat-adapter compare``: concepts x method variants x seeds as resumable, shardable jobs, reported as the paper's
Table 1, Fig. 5 and Fig. 7/8 (plan.py: the plan format; run.py: jobs; report.py: tables and plots)."""
