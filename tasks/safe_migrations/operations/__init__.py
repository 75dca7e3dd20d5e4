"""What is not the pipeline: rollback, restore, resolve, rehearsal (the upgrade step on
a copy, with an observer beside it), the stairway check, fleets (a member is one
single-database run in its own process)."""
