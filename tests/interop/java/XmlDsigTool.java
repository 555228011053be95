// Signs and verifies submissions with the JDK's javax.xml.crypto.dsig API, the way Java HIS software does it
// (tests/test_signature_interop.py compiles this with javac and runs it).
//
// Usage: java XmlDsigTool JOBS   (one job per line, fields separated by tabs)
//   sign    IN  OUT  P12  PASSWORD  OPTIONS   OPTIONS: comma-separated, "-" for none:
//       ds             Signature written with the ds: prefix (default: xmlns="http://www.w3.org/2000/09/xmldsig#")
//       exc-c14n       exclusive canonicalisation for SignedInfo and an exc-c14n transform after enveloped
//       c14n11         C14N 1.1 for SignedInfo
//       signing-time   a second reference to a SigningTime element in the signature's own Object
//       chain          every certificate of the PKCS#12 chain in X509Data (leaf first)
//       keyinfo-extra  X509SubjectName and X509IssuerSerial next to the certificate
//       outside        the signature appended to the root, not to CHUKYDONVI (a refusal case)
//       sha1           RSA-SHA1 and SHA-1 digests (a refusal case)
//       second-ref     a second reference to THONGTINDONVI (given an Id) besides URI="" (a refusal case)
//   verify  IN                            XMLSignature.validate with the first X509Data certificate's key
// Prints one line per job: "ok", "valid", "invalid" or "error <message>"; exits 0 once every job has run.
// The default form: enveloped transform only, inclusive C14N, RSA-SHA256 or ECDSA-SHA256 by key, SHA-256.
import java.io.File;
import java.io.FileInputStream;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.Key;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.X509Certificate;
import java.security.interfaces.ECPrivateKey;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import javax.xml.crypto.AlgorithmMethod;
import javax.xml.crypto.KeySelector;
import javax.xml.crypto.KeySelectorException;
import javax.xml.crypto.KeySelectorResult;
import javax.xml.crypto.XMLCryptoContext;
import javax.xml.crypto.XMLStructure;
import javax.xml.crypto.dsig.CanonicalizationMethod;
import javax.xml.crypto.dsig.DigestMethod;
import javax.xml.crypto.dsig.Reference;
import javax.xml.crypto.dsig.SignatureMethod;
import javax.xml.crypto.dsig.SignedInfo;
import javax.xml.crypto.dsig.Transform;
import javax.xml.crypto.dsig.XMLSignature;
import javax.xml.crypto.dsig.XMLObject;
import javax.xml.crypto.dsig.XMLSignatureFactory;
import javax.xml.crypto.dom.DOMStructure;
import javax.xml.crypto.dsig.dom.DOMSignContext;
import javax.xml.crypto.dsig.dom.DOMValidateContext;
import javax.xml.crypto.dsig.keyinfo.KeyInfo;
import javax.xml.crypto.dsig.keyinfo.KeyInfoFactory;
import javax.xml.crypto.dsig.keyinfo.X509Data;
import javax.xml.crypto.dsig.spec.C14NMethodParameterSpec;
import javax.xml.crypto.dsig.spec.TransformParameterSpec;
import javax.xml.parsers.DocumentBuilderFactory;
import javax.xml.transform.TransformerFactory;
import javax.xml.transform.dom.DOMSource;
import javax.xml.transform.stream.StreamResult;
import org.w3c.dom.Document;
import org.w3c.dom.Element;
import org.w3c.dom.NodeList;

public class XmlDsigTool {
    static final XMLSignatureFactory FACTORY = XMLSignatureFactory.getInstance("DOM");

    static Document load(String path) throws Exception {
        DocumentBuilderFactory builder = DocumentBuilderFactory.newInstance();
        builder.setNamespaceAware(true);
        builder.setFeature("http://apache.org/xml/features/disallow-doctype-decl", true);
        return builder.newDocumentBuilder().parse(new File(path));
    }

    static String sign(String input, String output, String p12, String password, List<String> options)
            throws Exception {
        KeyStore store = KeyStore.getInstance("PKCS12");
        try (FileInputStream in = new FileInputStream(p12)) {
            store.load(in, password.toCharArray());
        }
        String alias = Collections.list(store.aliases()).stream().filter(a -> {
            try { return store.isKeyEntry(a); } catch (Exception e) { return false; }
        }).findFirst().orElseThrow();
        PrivateKey key = (PrivateKey) store.getKey(alias, password.toCharArray());
        Certificate[] chain = store.getCertificateChain(alias);
        X509Certificate leaf = (X509Certificate) chain[0];

        Document doc = load(input);
        boolean sha1 = options.contains("sha1");
        String digest = sha1 ? DigestMethod.SHA1 : DigestMethod.SHA256;
        String method = key instanceof ECPrivateKey ? SignatureMethod.ECDSA_SHA256
                : sha1 ? SignatureMethod.RSA_SHA1 : SignatureMethod.RSA_SHA256;
        String c14n = options.contains("exc-c14n") ? CanonicalizationMethod.EXCLUSIVE
                : options.contains("c14n11") ? CanonicalizationMethod.INCLUSIVE_11 : CanonicalizationMethod.INCLUSIVE;
        List<Transform> transforms = new ArrayList<>();
        transforms.add(FACTORY.newTransform(Transform.ENVELOPED, (TransformParameterSpec) null));
        if (options.contains("exc-c14n")) {
            transforms.add(FACTORY.newTransform(CanonicalizationMethod.EXCLUSIVE, (TransformParameterSpec) null));
        }
        List<Reference> references = new ArrayList<>();
        references.add(FACTORY.newReference("", FACTORY.newDigestMethod(digest, null), transforms, null, null));
        if (options.contains("second-ref")) {
            Element unit = (Element) doc.getElementsByTagName("THONGTINDONVI").item(0);
            unit.setAttribute("Id", "donvi");
            unit.setIdAttribute("Id", true);
            references.add(FACTORY.newReference("#donvi", FACTORY.newDigestMethod(digest, null)));
        }
        List<XMLObject> objects = new ArrayList<>();
        if (options.contains("signing-time")) {
            Element time = doc.createElementNS(null, "SigningTime");
            time.setTextContent("2025-06-01T16:00:00+07:00");
            // DOM does not declare xmlns="" by itself: without it the digest is taken over a SigningTime that the
            // serialised file puts in another namespace, and every verifier (the JDK's own included) refuses it.
            time.setAttributeNS("http://www.w3.org/2000/xmlns/", "xmlns", "");
            objects.add(FACTORY.newXMLObject(List.of(new DOMStructure(time)), "signing-time", null, null));
            references.add(FACTORY.newReference("#signing-time", FACTORY.newDigestMethod(digest, null)));
        }
        SignedInfo signedInfo = FACTORY.newSignedInfo(
                FACTORY.newCanonicalizationMethod(c14n, (C14NMethodParameterSpec) null),
                FACTORY.newSignatureMethod(method, null), references);

        KeyInfoFactory keys = FACTORY.getKeyInfoFactory();
        List<Object> content = new ArrayList<>();
        if (options.contains("keyinfo-extra")) {
            content.add(leaf.getSubjectX500Principal().getName());
            content.add(keys.newX509IssuerSerial(leaf.getIssuerX500Principal().getName(), leaf.getSerialNumber()));
        }
        content.addAll(options.contains("chain") ? Arrays.asList(chain) : List.of(leaf));
        KeyInfo keyInfo = keys.newKeyInfo(List.of(keys.newX509Data(content)));

        Element parent = options.contains("outside") ? doc.getDocumentElement()
                : (Element) doc.getElementsByTagName("CHUKYDONVI").item(0);
        DOMSignContext context = new DOMSignContext(key, parent);
        if (options.contains("ds")) {
            context.setDefaultNamespacePrefix("ds");
        }
        FACTORY.newXMLSignature(signedInfo, keyInfo, objects, null, null).sign(context);
        TransformerFactory.newInstance().newTransformer().transform(new DOMSource(doc),
                new StreamResult(new File(output)));
        return "ok";
    }

    static String verify(String input) throws Exception {
        Document doc = load(input);
        NodeList nodes = doc.getElementsByTagNameNS(XMLSignature.XMLNS, "Signature");
        if (nodes.getLength() != 1) {
            return "error " + nodes.getLength() + " signatures";
        }
        KeySelector firstCertificate = new KeySelector() {
            public KeySelectorResult select(KeyInfo info, Purpose purpose, AlgorithmMethod method,
                                            XMLCryptoContext context) throws KeySelectorException {
                for (XMLStructure item : info.getContent()) {
                    if (item instanceof X509Data) {
                        for (Object entry : ((X509Data) item).getContent()) {
                            if (entry instanceof X509Certificate) {
                                Key key = ((X509Certificate) entry).getPublicKey();
                                return () -> key;
                            }
                        }
                    }
                }
                throw new KeySelectorException("no X509Certificate");
            }
        };
        DOMValidateContext context = new DOMValidateContext(firstCertificate, nodes.item(0));
        return FACTORY.unmarshalXMLSignature(context).validate(context) ? "valid" : "invalid";
    }

    public static void main(String[] args) throws Exception {
        for (String line : Files.readAllLines(Paths.get(args[0]))) {
            if (line.isEmpty()) {
                continue;
            }
            String[] f = line.split("\t");
            String result;
            try {
                result = f[0].equals("sign") ? sign(f[1], f[2], f[3], f[4], Arrays.asList(f[5].split(",")))
                        : verify(f[1]);
            } catch (Exception e) {
                result = "error " + e.getClass().getSimpleName() + ": " + String.valueOf(e.getMessage()).replace('\n', ' ');
            }
            System.out.println(result);
        }
    }
}
