# The EU AI Act (Article 50) disclosure category of a turn's outputs: obligations.disclosure.
#
# One of "fully_generated" (made from text alone), "partially_edited" (an edit of input images)
# or "deep_fake" (Article 3(60): it depicts real people, so it could falsely appear authentic).
# A tenant may fix the category in its data ("disclosure": one of the three), e.g. a newsroom
# that discloses every output as a deep fake. The compliance record of each output
# (GET /api/v1/query/outputs/{sha256}/record) reports the category the policy assigned, from the
# turn's recorded policy.decided event.
package custody

import rego.v1

disclosure_categories := {"fully_generated", "partially_edited", "deep_fake"}

disclosure := fixed if {
	fixed := object.get(tenant, "disclosure", "")
	fixed in disclosure_categories
} else := "deep_fake" if {
	deep_fake
} else := "partially_edited" if {
	has_images
} else := "fully_generated"

# People in the edit (the classifier's identifiable_people or minors signal), or the caller
# says so (x-custody-labels depicts=real_person).
deep_fake if depicts_people

deep_fake if labels.depicts == "real_person"
