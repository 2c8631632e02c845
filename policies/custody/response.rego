# Response-stage rules: what the model returned, before anything is signed and released.
package custody

import rego.v1

safety_finish_reasons := {"IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "PROHIBITED_CONTENT", "SAFETY", "NO_IMAGE"}

upstream_block_reasons contains reason if {
	reason := input.response.block_reason
	reason != null
}

upstream_block_reasons contains reason if {
	some reason in input.response.finish_reasons
	reason in safety_finish_reasons
}

# Safety blocks are the upstream's decision: the caller sees Gemini's own answer, recorded here.
notes contains msg if {
	input.stage == "response"
	count(upstream_block_reasons) > 0
	msg := concat("", [
		"the upstream blocked this turn (", concat(", ", sort(upstream_block_reasons)),
		"); its answer is passed through",
	])
}
