# Custody's default policy: the decision on every edit turn, before and after the upstream call.
#
# Entry point: data.custody.decision -> {"outcome", "reasons", "obligations"}.
# The input contract is described in docs/policy-guide.md; signals come from the prompt classifier
# (its term lists are in custody/classifier/data.json), counters from the rate limiter, and the
# per-tenant settings from custody/tenants/data.json ("default" applies to unknown tenants).
package custody

import rego.v1

tenant := t if {
	t := data.custody.tenants[input.actor.tenant]
} else := data.custody.tenants["default"]

# The names of the detector signals that matched (input.signals.<name>.matched). Read through
# the path, not the whole signal: the engine then hands rego-cpp only each signal's "matched".
matched contains name if {
	some name
	input.signals[name].matched == true
}

has_images if count(input.request.images) > 0

labels := object.get(input.request, "labels", {})

# -- outcome, by precedence: deny > rate limit > review > review_output > allow

default decision := {"outcome": "allow", "reasons": [], "obligations": {}}

decision := {"outcome": "deny", "reasons": sort(deny), "obligations": deny_obligations} if {
	count(deny) > 0
}

decision := {
	"outcome": "deny",
	"reasons": sort(rate_limited),
	"obligations": object.union(base_obligations, {"status_code": 429}),
} if {
	count(deny) == 0
	count(rate_limited) > 0
}

decision := {"outcome": "review", "reasons": sort(review), "obligations": review_obligations} if {
	count(deny) == 0
	count(rate_limited) == 0
	count(review) > 0
}

decision := {
	"outcome": "review_output",
	"reasons": sort(review_output),
	"obligations": review_obligations,
} if {
	count(deny) == 0
	count(rate_limited) == 0
	count(review) == 0
	count(review_output) > 0
}

decision := {"outcome": "allow", "reasons": sort(notes), "obligations": base_obligations} if {
	count(deny) == 0
	count(rate_limited) == 0
	count(review) == 0
	count(review_output) == 0
}

base_obligations := object.union(
	{
		"disclosure": disclosure, # the AI Act category (disclosure.rego)
		"disclose_prompt": object.get(tenant, "disclose_prompt", false),
		"thumbnails": object.get(tenant, "thumbnails", false),
	},
	url_input_obligations,
)

# fetch_url_inputs: Custody fetches the request's URL inputs and decides again on the bytes.
url_input_obligations := {"fetch_url_inputs": true} if fetch_url_inputs else := {}

# A refused URL input is the caller's to fix: 400, not 403.
deny_obligations := object.union(
	base_obligations,
	{"status_code": 400, "error_reason": "URL_INPUT_DENIED"},
) if url_inputs_denied else := base_obligations

# What a review task is opened with (governance/review/terms.py checks each value): who decides,
# how many distinct approvals, the deadline and what happens at it (reject, or escalate once to
# another group), how the manifest names the reviewer (name, pseudonym or commitment), and how
# long a Gemini caller's connection is held for the decision (0: answer at once).
review_obligations := object.union(base_obligations, {
	"reviewer_group": object.get(tenant, "reviewer_group", "reviewers"),
	"approvals_required": approvals_required,
	"review_deadline_s": object.get(tenant, "review_deadline_s", 86400),
	"on_deadline": on_deadline,
	"escalate_to": escalate_to,
	"reviewer_identity": object.get(tenant, "reviewer_identity", "name"),
	"review_wait_s": object.get(tenant, "review_wait_s", 0),
})

on_deadline := "escalate" if {
	object.get(tenant, "on_deadline", "reject") == "escalate"
	object.get(tenant, "escalate_to", "") != ""
} else := "reject"

escalate_to := tenant.escalate_to if on_deadline == "escalate" else := ""

approvals_required := object.get(tenant, "production_approvals", 1) if {
	labels.asset == "production"
}

else := 1
