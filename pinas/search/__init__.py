"""Architecture search on the trained supernet: BN recalibration, proxies, the evaluator, constraints and the
Pareto front, the evolution loop, and rank statistics between scores."""
