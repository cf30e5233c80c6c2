"""What each command does, given its typed plan (saeexp.plan): train, evaluate, fine-tune, the yardstick, the
feature dashboard, export, and the Pareto report."""
