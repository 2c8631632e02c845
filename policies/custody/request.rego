# Request-stage rules: what may be sent to the model at all, and what needs a human first.
package custody

import rego.v1

deny contains msg if {
	input.stage == "request"
	edit_roles := object.get(tenant, "edit_roles", ["editor", "admin"])
	count({r | some r in input.actor.roles; r in edit_roles}) == 0
	msg := concat("", [
		"actor ", input.actor.id, " holds none of the roles allowed to edit (",
		concat(", ", edit_roles), ")",
	])
}

deny contains "likeness edit of a public figure (deepfake) is not allowed" if {
	input.stage == "request"
	"public_figure_likeness" in matched
}

deny contains "sexualised or intimate imagery of a real person is not allowed" if {
	input.stage == "request"
	"intimate_imagery" in matched
	real_person
}

deny contains "sexualised imagery involving a minor is never allowed" if {
	"intimate_imagery" in matched
	"minors" in matched
}

deny contains "removing a watermark, logo or credit from an image is not allowed" if {
	input.stage == "request"
	"watermark_removal" in matched
}

deny contains msg if {
	input.stage == "request"
	tenant.require_rights_label == true
	has_images
	not labels.rights in rights_values
	msg := concat("", [
		"tenant ", input.actor.tenant,
		" requires the rights status of input images: send x-custody-labels rights=<",
		concat("|", rights_values), ">",
	])
}

deny contains msg if {
	input.stage == "request"
	tenant.require_consent_for_people == true
	depicts_people
	not labels.consent in consent_values
	msg := concat("", [
		"tenant ", input.actor.tenant,
		" requires consent for edits of identifiable people: send x-custody-labels consent=<",
		concat("|", consent_values), ">",
	])
}

rights_values := object.get(tenant, "rights_values", ["owned", "licensed", "public-domain"])

consent_values := object.get(tenant, "consent_values", ["obtained"])

real_person if has_images

real_person if "identifiable_people" in matched

real_person if "public_figure_likeness" in matched

depicts_people if "identifiable_people" in matched

depicts_people if "minors" in matched

review contains "the edit involves identifiable people" if {
	input.stage == "request"
	"identifiable_people" in matched
}

review contains "the edit involves a minor" if {
	input.stage == "request"
	"minors" in matched
}

review_output contains "production assets are reviewed before release" if {
	labels.asset == "production"
}

# -- complete mediation: the model, and inputs Custody cannot see into

default_settings := object.get(data.custody.tenants, "default", {})

allowed_models := object.get(tenant, "allowed_models", object.get(default_settings, "allowed_models", []))

deny contains msg if {
	input.stage == "request"
	not input.request.model in allowed_models
	msg := concat("", [
		"model ", input.request.model, " is not allowed for tenant ", input.actor.tenant,
		"; use one of: ", concat(", ", allowed_models),
	])
}

file_data := object.get(input.request, "file_data", [])

# URL inputs (fileData): "deny" (the default) refuses them with a 400; "fetch" lets Custody fetch
# each URL itself through its outbound guard (allow-listed schemes and hosts, public addresses
# only) and inline the bytes, which are then decided on like any inline input. The upstream
# never sees a URL either way.
url_inputs := object.get(tenant, "url_inputs", object.get(default_settings, "url_inputs", "deny"))

fetch_url_inputs if {
	input.stage == "request"
	count(file_data) > 0
	url_inputs == "fetch"
}

url_inputs_denied if {
	input.stage == "request"
	count(file_data) > 0
	not fetch_url_inputs
}

deny contains msg if {
	url_inputs_denied
	msg := concat("", [
		"URL inputs (fileData, ", format_int(count(file_data), 10),
		") are not allowed for tenant ", input.actor.tenant,
		": send the content inline as inlineData (or ask for the tenant setting url_inputs: fetch)",
	])
}

deny contains "cached content (cachedContent) is not inspected by Custody: send the content in the request" if {
	input.stage == "request"
	object.get(input.request, "cached_content", false) == true
	not object.get(tenant, "allow_cached_content", false)
}

# Non-image inputs the classifier cannot read (PDF, audio, video) could carry the very request
# the rules refuse; a tenant accepts them only by listing their types.
allowed_document_types := object.get(
	tenant, "allowed_document_types",
	object.get(default_settings, "allowed_document_types", ["text/plain"]),
)

deny contains msg if {
	input.stage == "request"
	some doc in object.get(input.request, "documents", [])
	not doc.mime_type in allowed_document_types
	msg := concat("", [
		"a ", doc.mime_type, " input cannot be read by Custody's checks, so tenant ",
		input.actor.tenant, " does not accept it (accepted non-image types: ",
		concat(", ", allowed_document_types), ")",
	])
}
