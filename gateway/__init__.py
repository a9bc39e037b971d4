"""The Stripe webhook gateway: a small HTTP process that turns verified Stripe events into
Grant and Revoke calls on the credits service, exactly once however Stripe delivers them.

It holds no database credentials and imports nothing of the service but its generated
stubs (`credits.v1`): the gRPC contract is the only thing the two share.
"""
