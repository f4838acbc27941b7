"""Policy bandit: Thompson sampling over arms, fed by outcomes joined to their decisions.

- :mod:`consumers.bandit.posterior`: arm statistics and P(best) by quadrature;
- :mod:`consumers.bandit.state`: the policy table and the view published to KV;
- :mod:`consumers.bandit.projection`: the fold (joins, reward wait, late outcomes);
- :mod:`consumers.bandit.consumer`: the registered consumer and its KV mirror.

Import from the modules: this package imports nothing, so the SDK's ``choose()`` can
read :mod:`consumers.bandit.state` without the statistics libraries the fold needs.
"""
