"""What a run reports: held-out scores, the learning verdict, and a sweep's Pareto frontiers and plots."""
