"""Redirect rules without I/O: user agents, languages, countries, privacy, ids, link rules and pages."""
