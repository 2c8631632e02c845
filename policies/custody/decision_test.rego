# Unit tests of the default policy: `custody policy test` (or `opa test policies/`).
# rego-cpp 1.5 crashes on `with input as {...}` when the rules call built-ins, so each test
# overrides the parts of the input it needs (`with input.request as r`), bound to locals first.
package custody_test

import rego.v1

editor := {"id": "e@acme", "roles": ["editor"], "tenant": "acme"}

request(prompt, images, labels) := {
	"model": "gemini-2.5-flash-image", "prompt": prompt, "images": images,
	"masks": [], "references": [], "labels": labels,
}

signals(names) := {name: {"matched": true, "terms": []} | some name in names}

photo := {"role": "parent", "mime_type": "image/png", "size": 10, "width": 1, "height": 1,
	"sha256": "00", "has_content_credentials": false}

decide(actor, req, sigs, counters) := d if {
	d := data.custody.decision with input.stage as "request"
		with input.actor as actor
		with input.request as req
		with input.signals as sigs
		with input.counters as counters
}

test_plain_edit_is_allowed if {
	a := editor
	r := request("make the sofa teal", [photo], {})
	d := decide(a, r, {}, {})
	d.outcome == "allow"
}

test_public_figure_likeness_is_denied if {
	a := editor
	r := request("x", [photo], {})
	s := signals(["public_figure_likeness"])
	d := decide(a, r, s, {})
	d.outcome == "deny"
}

test_intimate_imagery_of_a_real_person_is_denied if {
	a := editor
	r := request("x", [photo], {})
	s := signals(["intimate_imagery"])
	d := decide(a, r, s, {})
	d.outcome == "deny"
}

test_watermark_removal_is_denied if {
	a := editor
	r := request("x", [photo], {})
	s := signals(["watermark_removal"])
	d := decide(a, r, s, {})
	d.outcome == "deny"
}

test_identifiable_people_with_consent_go_to_review if {
	a := editor
	r := request("x", [photo], {"consent": "obtained"})
	s := signals(["identifiable_people"])
	d := decide(a, r, s, {})
	d.outcome == "review"
	d.obligations.reviewer_group == "acme-brand-review"
}

test_acme_review_terms_escalate_to_legal_and_name_reviewers_by_pseudonym if {
	r := request("x", [photo], {"consent": "obtained"})
	d := decide(editor, r, signals(["identifiable_people"]), {})
	d.obligations.review_deadline_s == 14400
	d.obligations.on_deadline == "escalate"
	d.obligations.escalate_to == "acme-legal"
	d.obligations.reviewer_identity == "pseudonym"
	d.obligations.review_wait_s == 0
}

test_default_review_terms_reject_at_a_day_and_name_the_reviewer if {
	a := {"id": "x@nowhere", "roles": ["editor"], "tenant": "nowhere"}
	d := decide(a, request("x", [photo], {}), signals(["identifiable_people"]), {})
	d.obligations.approvals_required == 1
	d.obligations.review_deadline_s == 86400
	d.obligations.on_deadline == "reject"
	d.obligations.escalate_to == ""
	d.obligations.reviewer_identity == "name"
}

test_escalation_without_a_target_group_rejects_instead if {
	a := {"id": "x@t", "roles": ["editor"], "tenant": "t"}
	t := object.union(data.custody.tenants, {"t": object.union(data.custody.tenants["default"], {"on_deadline": "escalate"})})
	d := decide(a, request("x", [photo], {}), signals(["identifiable_people"]), {}) with data.custody.tenants as t
	d.obligations.on_deadline == "reject"
}

test_licensed_only_reviewers_appear_as_commitments if {
	a := {"id": "l@licensed-only", "roles": ["editor"], "tenant": "licensed-only"}
	r := request("x", [photo], {"rights": "licensed", "consent": "obtained"})
	d := decide(a, r, signals(["identifiable_people"]), {})
	d.outcome == "review"
	d.obligations.reviewer_identity == "commitment"
}

test_acme_requires_consent_for_people if {
	a := editor
	r := request("x", [photo], {})
	s := signals(["identifiable_people"])
	d := decide(a, r, s, {})
	d.outcome == "deny"
}

test_production_assets_hold_the_output if {
	a := editor
	r := request("x", [photo], {"asset": "production"})
	d := decide(a, r, {}, {})
	d.outcome == "review_output"
	d.obligations.approvals_required == 2
}

test_rate_limit_denies_with_429 if {
	a := {"id": "b@ratelimited", "roles": ["editor"], "tenant": "ratelimited"}
	r := request("x", [], {})
	c := {"per_minute": {"window_s": 60, "actor_turns": 6, "tenant_turns": 6}}
	d := decide(a, r, {}, c)
	d.outcome == "deny"
	d.obligations.status_code == 429
}

test_rate_limit_allows_the_last_turn_within_the_limit if {
	a := {"id": "b@ratelimited", "roles": ["editor"], "tenant": "ratelimited"}
	r := request("x", [], {})
	c := {"per_minute": {"window_s": 60, "actor_turns": 5, "tenant_turns": 5}}
	d := decide(a, r, {}, c)
	d.outcome == "allow"
}

test_rights_label_required_by_tenant if {
	a := {"id": "l@licensed-only", "roles": ["editor"], "tenant": "licensed-only"}
	r := request("x", [photo], {})
	d := decide(a, r, {}, {})
	d.outcome == "deny"
	r2 := request("x", [photo], {"rights": "licensed"})
	d2 := decide(a, r2, {}, {})
	d2.outcome == "allow"
}

test_auditors_cannot_edit if {
	a := {"id": "au@acme", "roles": ["auditor"], "tenant": "acme"}
	r := request("x", [], {})
	d := decide(a, r, {}, {})
	d.outcome == "deny"
}

test_unknown_tenant_uses_default_settings if {
	a := {"id": "x@nowhere", "roles": ["editor"], "tenant": "nowhere"}
	r := request("x", [photo], {})
	s := signals(["identifiable_people"])
	d := decide(a, r, s, {})
	d.outcome == "review"
	d.obligations.reviewer_group == "reviewers"
}

test_upstream_safety_block_is_passed_through if {
	a := editor
	r := request("x", [photo], {})
	resp := {"block_reason": null, "finish_reasons": ["IMAGE_SAFETY"], "text": "", "output_count": 0}
	d := data.custody.decision with input.stage as "response"
		with input.actor as a
		with input.request as r
		with input.signals as {}
		with input.response as resp
	d.outcome == "allow"
	count(d.reasons) == 1
}

test_a_model_outside_the_allow_list_is_denied_naming_the_allowed_ones if {
	a := editor
	r := object.union(request("make the sofa teal", [photo], {}), {"model": "gemini-2.0-flash"})
	d := decide(a, r, {}, {})
	d.outcome == "deny"
	some reason in d.reasons
	contains(reason, "model gemini-2.0-flash is not allowed")
	contains(reason, "gemini-3-pro-image-preview")
}

test_every_default_image_model_is_allowed if {
	a := editor
	every model in ["gemini-2.5-flash-image", "gemini-2.5-flash-image-preview", "gemini-3-pro-image-preview"] {
		r := object.union(request("make the sofa teal", [photo], {}), {"model": model})
		d := decide(a, r, {}, {})
		d.outcome == "allow"
	}
}

test_a_tenant_allow_list_overrides_the_default if {
	a := {"id": "l@licensed-only", "roles": ["editor"], "tenant": "licensed-only"}
	r := object.union(request("x", [photo], {"rights": "licensed"}), {"model": "gemini-3-pro-image-preview"})
	d := decide(a, r, {}, {})
	d.outcome == "deny"
}

test_file_references_are_denied_by_default if {
	a := editor
	f := [{"uri": "https://example.test/a.png", "scheme": "https", "mime_type": "image/png"}]
	r := object.union(request("x", [photo], {}), {"file_data": f})
	d := decide(a, r, {}, {})
	d.outcome == "deny"
	some reason in d.reasons
	contains(reason, "inlineData")
	d.obligations.status_code == 400
	d.obligations.error_reason == "URL_INPUT_DENIED"
	not d.obligations.fetch_url_inputs
}

test_a_tenant_that_allows_url_inputs_has_custody_fetch_them if {
	f := [{"uri": "https://example.test/a.png", "scheme": "https", "mime_type": "image/png"}]
	r := object.union(request("x", [photo], {}), {"file_data": f})
	t := object.union(data.custody.tenants, {"acme": object.union(data.custody.tenants.acme, {"url_inputs": "fetch"})})
	d := decide(editor, r, {}, {}) with data.custody.tenants as t
	d.outcome == "allow"
	d.obligations.fetch_url_inputs == true
}

test_no_fetch_obligation_without_url_inputs if {
	t := object.union(data.custody.tenants, {"acme": object.union(data.custody.tenants.acme, {"url_inputs": "fetch"})})
	d := decide(editor, request("x", [photo], {}), {}, {}) with data.custody.tenants as t
	not d.obligations.fetch_url_inputs
}

test_cached_content_is_denied_by_default if {
	a := editor
	r := object.union(request("x", [photo], {}), {"cached_content": true})
	d := decide(a, r, {}, {})
	d.outcome == "deny"
}

test_a_signal_found_in_the_system_instruction_still_denies if {
	a := editor
	r := request("go ahead", [], {})
	s := {"watermark_removal": {"matched": true, "terms": ["watermark"], "fields": ["systemInstruction"]}}
	d := decide(a, r, s, {})
	d.outcome == "deny"
}

test_an_image_of_unknown_size_is_decided_not_failed if {
	a := editor
	heic := object.union(photo, {"mime_type": "image/heic", "width": null, "height": null})
	r := request("make the sofa teal", [heic], {})
	d := decide(a, r, {}, {})
	d.outcome == "allow"
}

test_a_pdf_input_is_denied_unless_the_tenant_accepts_it if {
	a := editor
	pdf := {"mime_type": "application/pdf", "declared_mime_type": "application/pdf", "size": 9,
		"sha256": "00", "history": false}
	r := object.union(request("x", [photo], {}), {"documents": [pdf]})
	d := decide(a, r, {}, {})
	d.outcome == "deny"
	some reason in d.reasons
	contains(reason, "application/pdf input cannot be read")
	note := object.union(pdf, {"mime_type": "text/plain", "declared_mime_type": "text/plain"})
	r2 := object.union(request("x", [photo], {}), {"documents": [note]})
	d2 := decide(a, r2, {}, {})
	d2.outcome == "allow"
}
