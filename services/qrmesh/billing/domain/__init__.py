"""The billing service's pure logic: entitlements, proration, the subscription life cycle and
payment provider events. No I/O."""
