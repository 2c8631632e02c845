# Rate limits per actor and per tenant, per window (custody/tenants/data.json: rate_limits).
# input.counters[window][metric] already counts the turn being decided, so a turn is allowed while
# the count is at most the limit: the limiter reserves atomically before the policy runs.
package custody

import rego.v1

rate_limited contains msg if {
	input.stage == "request"
	some window_name, window in object.get(tenant, "rate_limits", {})
	some metric, limit in window
	metric != "window_s"
	used := input.counters[window_name][metric]
	used > limit
	msg := concat("", [
		"rate limit exceeded: ", window_name, " ", metric, " is ", format_int(used, 10),
		", the limit is ", format_int(limit, 10), " per ", format_int(window.window_s, 10), " s",
	])
}
