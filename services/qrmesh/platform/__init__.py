"""Shared runtime for every qrmesh service.

Settings, errors, interceptors, validation, telemetry, logging, database and
Redis factories, client channels and the server bootstrap. Nothing in this
package knows about a particular service.
"""
