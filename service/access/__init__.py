"""Who may call what, how fast, and how failures leave: the interceptor chain and its parts."""
