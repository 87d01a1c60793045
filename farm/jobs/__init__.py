"""A job's life, one module per stage: the contract (what a job is), the policy (what may run, what an end
releases), the steps (one job's work, in order), and the executors that carry them out (a worker's claim ->
run -> record; the local process pool). See docs/architecture.md."""
