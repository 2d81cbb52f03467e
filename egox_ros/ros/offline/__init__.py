"""Bag in, bag out: `egox replay` (the node over DDS, in lockstep with a bag player), `egox process` (the engine in
this process, no DDS) and `egox batch` (many bags, on Ray). plan.py checks a run before it starts and is shared by
all three; player.py is the replay's DDS player and recorder; report.py writes metrics.json and the contact sheet;
bag_driver.py feeds the engine from a bag for process; bag_check.py reads an output bag back.
plan.py imports nothing of the others, so there is no circle."""
