"""coopctl: keep a cooperative's online services in line with its LDAP directory."""

__version__ = "0.1.0"
