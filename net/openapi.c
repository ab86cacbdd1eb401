/* openapi.c - net/openapi.json, compiled into the server: GET /openapi.json
 * serves it as it is (the Makefile rebuilds this file when it changes). */
#include "http.h"

__asm__(".section .rodata\n"
        ".global vlm__openapi_json\n"
        ".type vlm__openapi_json, @object\n"
        ".balign 16\n"
        "vlm__openapi_json:\n"
        ".incbin \"net/openapi.json\"\n"
        "vlm__openapi_json_end:\n"
        ".byte 0\n"
        ".global vlm__openapi_json_len\n"
        ".type vlm__openapi_json_len, @object\n"
        ".balign 4\n"
        "vlm__openapi_json_len:\n"
        ".long vlm__openapi_json_end - vlm__openapi_json\n"
        ".previous\n");
