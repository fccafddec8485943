"""The optional services the HTTP layer reaches through the runtime: the host's model cache, network
volumes, account secrets and registry auths, source uploads, the release builder and the price
table. `ember.app.create_app` builds them once; a runtime made without one (a test's) leaves it None,
and the routes that need it answer that it is not enabled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ember.core.errors import BackendError

if TYPE_CHECKING:  # for annotations only: importing the API does not import the services' modules
    from ember.build.registry import Sealer
    from ember.build.uploads import Uploads
    from ember.control.builder import Builder
    from ember.control.model_preparer import ModelPreparer
    from ember.control.registry_auths import RegistryAuths
    from ember.control.secrets import AccountSecrets
    from ember.core.billing import PriceTable
    from ember.models.cache import ModelCache
    from ember.volumes.store import VolumeManager

T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    models: ModelCache | None = None  # the host's Hugging Face cache
    volumes: VolumeManager | None = None  # network volumes on this host
    preparer: ModelPreparer | None = None  # fetches endpoints' models; who may see which
    secrets: AccountSecrets | None = None
    sealer: Sealer | None = None  # seals and opens secrets kept in endpoint specs (git webhook secrets)
    registry_auths: RegistryAuths | None = None
    uploads: Uploads | None = None  # source archives uploaded for endpoints
    builder: Builder | None = None  # the loop that builds git releases
    prices: PriceTable | None = None  # the meter's prices


def required(service: T | None, name: str) -> T:
    """`service`, or BackendError "<name> are not enabled on this server" when it is None."""
    if service is None:
        raise BackendError(f"{name} are not enabled on this server")
    return service
