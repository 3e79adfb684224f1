"""Egress control for ``restricted`` tasks: the allow-list and operator address rules
(``allowlist``), the TLS server-name check (``sni``) and the proxy that is a restricted
sandbox's only way out (``proxy``). ``sandbox.netns`` makes the listener inside the
sandbox's namespace; this package decides what each connection may reach."""
