"""Tools that read a recorded log: export to a verifiable file, replay every projection,
backtest a rollback policy, the weekly report and off-policy evaluation of bandit
policies. None of them writes to the live log."""
