"""Nextcloud contract double: NOT Nextcloud.

A small stand-in that answers the part of Nextcloud's interface coopctl uses:
the OCS Provisioning API (``/ocs/v1.php/cloud/...`` and ``/ocs/v2.php/...``)
and a subset of ``occ user:*``, backed by one SQLite database. Python standard
library only, so it runs on a Debian host's own python3. It exists because
Nextcloud itself cannot be installed from any registry the lab reaches; its
behaviour follows Nextcloud's documented and coded OCS semantics (envelope,
v1/v2 status codes, XML/JSON, basic auth of an admin, ``OCS-APIRequest``).
"""

DOUBLE_NAME = "nextcloud-double"
DOUBLE_VERSION = "1.0"
# What /status.php reports as the emulated server version.
EMULATED_NEXTCLOUD_VERSION = "28.0.0.0"
