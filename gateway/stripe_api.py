"""The gateway's one read of Stripe's API: a charge, when a refund of it failed or was
canceled (docs/gateway.md, "Refunds that fail"). Its events carry neither the charge's
new amount_refunded, nor its amount, nor its mark, so the charge itself is read.

With the `stripe` library's async HTTP client (httpx), one attempt per delivery, bounded
by a timeout: while Stripe is unreachable the webhook answers 503 and Stripe delivers the
event again, so no retry of our own holds its connection. The API key (a restricted key
that may read charges) is never logged, nor part of any error raised here.
"""

from collections.abc import Mapping
from typing import Protocol

import stripe

# Stripe's own API; a stripe-mock or a local stub in development and tests.
STRIPE_API_BASE_DEFAULT = "https://api.stripe.com"
# Within the time Stripe waits for the webhook's answer, with the service call after it.
STRIPE_CALL_TIMEOUT_SECONDS = 5.0
# Stripe retries the delivery itself; a retry here would only hold its connection.
STRIPE_NETWORK_RETRIES = 0


class StripeUnavailable(Exception):
    """Stripe could not answer now (network, timeout, rate limit, its 5xx): answer 503."""


class StripeRefused(Exception):
    """Stripe refused the read (a key that is wrong or may not read charges, a charge that
    does not exist under this key): an operator must fix it; answer 500."""


class Charges(Protocol):
    async def retrieve(self, charge_id: str) -> Mapping[str, object]: ...


class StripeCharges:
    """Charges read from Stripe's API with `api_key`."""

    def __init__(
        self,
        api_key: str,
        api_base: str = STRIPE_API_BASE_DEFAULT,
        timeout_seconds: float = STRIPE_CALL_TIMEOUT_SECONDS,
    ) -> None:
        self._http = stripe.HTTPXClient(timeout=timeout_seconds)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            max_network_retries=STRIPE_NETWORK_RETRIES,
            http_client=self._http,
        )

    def __repr__(self) -> str:
        return "StripeCharges(api_key=<hidden>)"

    async def retrieve(self, charge_id: str) -> Mapping[str, object]:
        try:
            charge = await self._client.v1.charges.retrieve_async(charge_id)
        except (stripe.AuthenticationError, stripe.PermissionError) as error:
            raise StripeRefused(f"charges read refused: HTTP {error.http_status}") from None
        except stripe.InvalidRequestError as error:
            raise StripeRefused(f"charge read refused: HTTP {error.http_status}") from None
        except stripe.StripeError as error:
            raise StripeUnavailable(f"Stripe unavailable: {type(error).__name__}") from None
        document: dict[str, object] = charge.to_dict()
        return document

    async def close(self) -> None:
        # The library leaves this one untyped.
        await self._http.close_async()  # type: ignore[no-untyped-call]
