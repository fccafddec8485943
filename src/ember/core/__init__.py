"""Pure rules of the platform: states, transitions, specs, scaling, billing, limits, placement.

Nothing here performs I/O, reads a clock, the environment, logs or touches asyncio.
"""
