/* data_svg.c - the Dublin Core / Creative Commons metadata of SVG files.
 *
 * Inkscape-era SVGs (all of openclipart 0.18) carry
 *   <metadata><rdf:RDF><cc:Work>
 *     <dc:title/> <dc:description/> <dc:subject><rdf:Bag><rdf:li/>...
 *     <dc:creator><cc:Agent><dc:title>Author</dc:title></cc:Agent>...
 *     <cc:license rdf:resource="..."/>
 * Agents (creator, publisher, rights) have dc:title children of their own,
 * so a title counts as the work's only when no cc:Agent encloses it.
 * Elements are matched by namespace URI, or by their prefixed name when a
 * broken file uses a prefix it never declared (libxml2's recovery mode
 * then leaves the prefix in the name).
 */
#include "vlm_data.h"
#include "vlm_error.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <stdlib.h>
#include <string.h>

#define NS_DC "http://purl.org/dc/elements/1.1/"
#define NS_SVG "http://www.w3.org/2000/svg"

/* 1 if node is the element prefix:local in namespace uri (or, when uri is
 * NULL, in any namespace). */
static int is_elem(const xmlNode *node, const char *uri, const char *prefix,
                   const char *local) {
  if (node->type != XML_ELEMENT_NODE) return 0;
  const char *name = (const char *)node->name;
  if (node->ns) {
    if (strcmp(name, local)) return 0;
    return !uri || (node->ns->href && !strcmp((const char *)node->ns->href, uri));
  }
  if (!strcmp(name, local)) return uri == NULL;
  size_t plen = strlen(prefix);
  return !strncmp(name, prefix, plen) && name[plen] == ':' &&
         !strcmp(name + plen + 1, local);
}

static int is_dc(const xmlNode *node, const char *local) {
  return is_elem(node, NS_DC, "dc", local);
}

static int local_is(const xmlNode *node, const char *local) {
  if (node->type != XML_ELEMENT_NODE) return 0;
  const char *name = (const char *)node->name;
  const char *colon = node->ns ? NULL : strchr(name, ':');
  return !strcmp(colon ? colon + 1 : name, local);
}

static int inside_agent(const xmlNode *node) {
  for (const xmlNode *p = node->parent; p && p->type == XML_ELEMENT_NODE;
       p = p->parent)
    if (local_is(p, "Agent")) return 1;
  return 0;
}

/* Normalized text content of node, NULL if empty. */
static int node_text(xmlNode *node, char **out) {
  *out = NULL;
  xmlChar *raw = xmlNodeGetContent(node);
  if (!raw) return 0;
  int rc = vlm_data_text_normalize((const char *)raw, out);
  xmlFree(raw);
  if (rc == 0 && *out && !**out) {
    free(*out);
    *out = NULL;
  }
  return rc;
}

static int add_keyword(vlm_data_svg_meta *m, char *kw) {
  char **grown = realloc(m->keywords, (size_t)(m->nkeywords + 1) * sizeof *grown);
  if (!grown) {
    free(kw);
    return vlm_seterr(VLM_ENOMEM, "svg keywords");
  }
  m->keywords = grown;
  m->keywords[m->nkeywords++] = kw;
  return 0;
}

/* dc:subject: rdf:Bag/rdf:li items, or a comma-separated text when a file
 * has no list. */
static int read_subject(xmlNode *subject, vlm_data_svg_meta *m) {
  int found_li = 0, rc = 0;
  /* Depth-first over the subject's descendants, without recursion. */
  xmlNode *node = subject->children;
  while (node && node != subject) {
    if (node->type == XML_ELEMENT_NODE && local_is(node, "li")) {
      found_li = 1;
      char *kw;
      if ((rc = node_text(node, &kw))) return rc;
      if (kw && (rc = add_keyword(m, kw))) return rc;
    } else if (node->children && node->type == XML_ELEMENT_NODE) {
      node = node->children;
      continue;
    }
    while (node != subject && !node->next) node = node->parent;
    if (node != subject) node = node->next;
  }
  if (found_li) return 0;
  char *text;
  if ((rc = node_text(subject, &text)) || !text) return rc;
  char *save = NULL;
  for (char *tok = strtok_r(text, ",;", &save); tok;
       tok = strtok_r(NULL, ",;", &save)) {
    char *kw;
    if ((rc = vlm_data_text_normalize(tok, &kw))) break;
    if (!*kw) {
      free(kw);
      continue;
    }
    if ((rc = add_keyword(m, kw))) break;
  }
  free(text);
  return rc;
}

/* dc:creator: the agent's dc:title, or the element's own text. */
static int read_creator(xmlNode *creator, char **out) {
  for (xmlNode *a = creator->children; a; a = a->next) {
    if (!local_is(a, "Agent")) continue;
    for (xmlNode *t = a->children; t; t = t->next)
      if (is_dc(t, "title")) return node_text(t, out);
  }
  return node_text(creator, out);
}

static int visit(xmlNode *node, vlm_data_svg_meta *m) {
  int rc = 0;
  if (is_dc(node, "title")) {
    if (!m->title && !inside_agent(node)) rc = node_text(node, &m->title);
  } else if (is_dc(node, "description")) {
    if (!m->description && !inside_agent(node))
      rc = node_text(node, &m->description);
  } else if (is_dc(node, "subject")) {
    if (!inside_agent(node)) rc = read_subject(node, m);
  } else if (is_dc(node, "creator")) {
    if (!m->creator) rc = read_creator(node, &m->creator);
  } else if (local_is(node, "license") && !is_dc(node, "license")) {
    if (!m->license) {
      xmlChar *res = xmlGetProp(node, (const xmlChar *)"resource");
      if (res) {
        rc = vlm_data_text_normalize((const char *)res, &m->license);
        xmlFree(res);
      }
    }
  } else if (!m->svg_title && (is_elem(node, NS_SVG, "svg", "title") ||
                               (!node->ns && !strcmp((const char *)node->name, "title")))) {
    rc = node_text(node, &m->svg_title);
  }
  return rc;
}

static int walk(xmlNode *root, vlm_data_svg_meta *m) {
  xmlNode *node = root;
  while (node) {
    int rc = visit(node, m);
    if (rc) return rc;
    /* Descend, except into elements whose text we already took whole. */
    if (node->children && node->type == XML_ELEMENT_NODE &&
        !is_dc(node, "subject") && !is_dc(node, "creator")) {
      node = node->children;
      continue;
    }
    while (node && node != root && !node->next) node = node->parent;
    if (!node || node == root) break;
    node = node->next;
  }
  return 0;
}

static const int PARSE_OPTIONS = XML_PARSE_RECOVER | XML_PARSE_NONET |
                                 XML_PARSE_NOERROR | XML_PARSE_NOWARNING |
                                 XML_PARSE_COMPACT | XML_PARSE_NOCDATA;

static int from_doc(xmlDoc *doc, const char *name, vlm_data_svg_meta *out) {
  memset(out, 0, sizeof *out);
  xmlNode *root = doc ? xmlDocGetRootElement(doc) : NULL;
  if (!root) {
    xmlFreeDoc(doc);
    return vlm_seterr(VLM_EFORMAT, "%s: not XML", name);
  }
  int rc = walk(root, out);
  xmlFreeDoc(doc);
  if (rc) vlm_data_svg_meta_free(out);
  return rc;
}

int vlm_data_svg_meta_read(const char *path, vlm_data_svg_meta *out) {
  xmlDoc *doc = xmlReadFile(path, NULL, PARSE_OPTIONS);
  return from_doc(doc, path, out);
}

int vlm_data_svg_meta_parse(const char *buf, size_t len, const char *name,
                            vlm_data_svg_meta *out) {
  if (len > (size_t)INT32_MAX) {
    memset(out, 0, sizeof *out);
    return vlm_seterr(VLM_ETOOBIG, "%s: %zu bytes", name, len);
  }
  xmlDoc *doc = xmlReadMemory(buf, (int)len, name, NULL, PARSE_OPTIONS);
  return from_doc(doc, name, out);
}

void vlm_data_svg_meta_free(vlm_data_svg_meta *m) {
  if (!m) return;
  free(m->title);
  free(m->description);
  free(m->creator);
  free(m->license);
  free(m->svg_title);
  for (int i = 0; i < m->nkeywords; i++) free(m->keywords[i]);
  free(m->keywords);
  memset(m, 0, sizeof *m);
}
